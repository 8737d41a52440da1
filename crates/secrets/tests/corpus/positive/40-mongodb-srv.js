await mongoose.connect("mongodb+srv://svc-api:uTrnT4TlxoX4XiEN9S3X@cluster0.x7k2p.mongodb.net/prod?retryWrites=true");
