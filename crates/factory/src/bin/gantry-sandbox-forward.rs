//! The egress forwarder as a program of its own, for the factory's tests (whose test
//! binary cannot be started as one). `gantry sandbox-forward` is the same code.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    std::process::exit(gantry_factory::egress::forward::main(&args));
}
