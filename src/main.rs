use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = rigdoctor::cli::Cli::parse();
    ExitCode::from(rigdoctor::app::run(cli))
}
