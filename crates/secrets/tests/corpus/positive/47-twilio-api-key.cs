var apiKeySid = "SK093a296bad65f6abe81c41aa6bf1730e";
var apiKeySecret = "k9uRWoAhYLa1NfM3xdr6eZqWQYXFnTkV";
