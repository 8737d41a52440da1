ENGINE = create_engine("mysql://report:ZHYQFQEX9GsmQDPg@10.0.4.12:3306/metrics")
