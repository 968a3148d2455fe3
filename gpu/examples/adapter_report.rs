//! Prints the adapter wgpu would use here and its limits, or why there is none.
//!
//! `cargo run -p hybrid-gpu --example adapter_report` (honours `HYBRID_WGPU_ADAPTER`).

use std::process::ExitCode;

use gpu::{GpuContext, GpuOptions};

fn main() -> ExitCode {
    let result = GpuContext::new(&GpuOptions::from_env()).and_then(|ctx| {
        println!("{}", ctx.report());
        ctx.warm_up()
    });
    match result {
        Ok(()) => {
            println!("all kernels build");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
