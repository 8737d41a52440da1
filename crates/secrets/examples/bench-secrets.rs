//! `cargo run --release -p gantry-secrets --example bench-secrets [MB]`: the benchmark of
//! `gantry bench secrets` without building the CLI.

fn main() {
    let mb = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(32);
    let report = gantry_secrets::bench::run(mb, 3);
    #[allow(clippy::print_stdout)]
    {
        println!("{report}");
    }
}
