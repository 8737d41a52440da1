import discord
bot = discord.Client(intents=discord.Intents.default())
bot.run("MT1rzHRSfYqGZtAKyxoXsiV6SD.l49jU7.9EkwB-3Bb5OslHlxZrOBdqMCzYymlQ1zw74Bs_")
