class Settings(BaseSettings):
    api_key: str = Field(..., description="API key for the provider")
    token_ttl: int = 3600
