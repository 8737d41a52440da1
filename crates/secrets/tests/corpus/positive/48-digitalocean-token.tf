provider "digitalocean" {
  token = "dop_v1_d63ffe49f91599d619499b0572949b8cdf89c1117e7e38c310832cc0ab4ceba7"
}
