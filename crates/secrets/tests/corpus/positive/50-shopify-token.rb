ShopifyAPI::Context.setup(api_key: 'k', api_secret_key: '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')
