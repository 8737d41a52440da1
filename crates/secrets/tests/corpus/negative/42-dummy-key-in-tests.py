def test_auth():
    client = Client(api_key="dummy-api-key-for-tests")
