DATABASES = {"default": {"HOST": "db", "PASSWORD": "DRXb6v9s20hBXl"}}
