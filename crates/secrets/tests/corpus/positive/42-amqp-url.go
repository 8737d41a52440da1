conn, err := amqp.Dial("amqps://orders:jrFmWULYJmzzF2VUZj@rabbit.acme.io:5671/prod")
