//! `gantry`: the command-line interface of Gantry; everything is in the library
//! (`gantry_cli`), this binary only runs it.

fn main() -> std::process::ExitCode {
    gantry_cli::main()
}
