const openai = new OpenAI({ apiKey: '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' });
