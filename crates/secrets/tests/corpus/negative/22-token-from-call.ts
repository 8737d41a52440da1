const token = await getAccessToken(session);
const secret = config.get('secret');
