from slack_sdk import WebClient
client = WebClient(token="xoxb-192322535787-8544071661478-Qee7oeujaR4fZVupLTX509gu")
