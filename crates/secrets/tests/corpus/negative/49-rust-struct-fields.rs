pub struct SecurityContext {
    pub credentials: MI_UserCredentials_0,
    pub ExpandPreSharedKey: SslExpandPreSharedKeyFn,
    pub register_key_notify: ProtocolRegisterKeyNotify,
}
pub const MsV1_0GetStrongCredentialKey: MSV1_0_PROTOCOL_MESSAGE_TYPE = 21i32;
pub const NL80211_KEY_MAX: nl80211_key_attributes = nl80211_key_attributes::NL80211_KEY_DEFAULT_BEACON;
