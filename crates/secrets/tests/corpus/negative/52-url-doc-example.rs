/// abc://username:password@example.com:123/path/data?key=value&key2=value2#fragid1
/// let url = Url::parse("ftp://rms:secret123@example.com")?;
fn parse() {}
