const hook = "https://discord.com/api/webhooks/5716914642682173912/XNEv80aJ-acvE8TijoJGXRan7KlOVfm8qkCJ8jjDKjKMu6ddCACOnqIb0fYsT-V9AGys";
