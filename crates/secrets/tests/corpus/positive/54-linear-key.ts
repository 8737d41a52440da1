const linear = new LinearClient({ apiKey: "lin_api_BDygTMiz9IA8vh6SbxqOzcgUbpFwhSxxEFVoUZDp" });
