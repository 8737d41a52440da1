REQUEST_ID = "6a06fb46-0a0b-4ce7-9823-f4111080a7ae"
trace_id = "1dacce91-d482-4edd-884a-3a62b90e6410"
