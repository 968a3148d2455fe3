//! The failure paths a server depends on: limits exceeded, no adapter, device lost. None of
//! them may panic; each must say what happened.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use gpu::{ADAPTER_ENV, GpuContext, GpuError, GpuOptions};

#[test]
fn buffer_over_the_device_limit_is_a_clear_error_and_the_context_stays_usable() {
    let Some(ctx) = common::new_context() else {
        return;
    };
    let limit = ctx.report().max_tensor_bytes();
    let too_many = (limit / 4 + 1) as usize;
    let err = ctx.zeros(&[too_many]).unwrap_err();
    match &err {
        GpuError::BufferTooLarge {
            requested,
            limit: l,
        } => {
            assert_eq!(*requested, too_many as u64 * 4);
            assert_eq!(*l, limit);
        }
        other => panic!("expected BufferTooLarge, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&limit.to_string()) && msg.contains("split"),
        "{msg}"
    );

    // Outputs are checked too: four ids over a table whose rows are a quarter of the limit.
    let row = (limit / 16 + 1) as usize;
    let table = ctx.zeros(&[1, row]).unwrap();
    let ids = ctx.upload_u32(&[0; 4], &[4]).unwrap();
    let err = ctx.batch().unwrap().embedding(&ids, &table).unwrap_err();
    assert!(matches!(err, GpuError::BufferTooLarge { .. }), "{err}");
    drop(table);

    assert!(ctx.is_healthy());
    let ok = ctx.upload_f32(&[1.0, 2.0], &[2]).unwrap();
    assert_eq!(ctx.download_f32(&ok).unwrap(), vec![1.0, 2.0]);
}

#[test]
fn an_adapter_override_that_matches_nothing_is_a_clear_error() {
    let err = GpuContext::new(&GpuOptions {
        adapter: Some("no-such-adapter-xyz".to_owned()),
    })
    .unwrap_err();
    assert!(matches!(err, GpuError::NoAdapter { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("no-such-adapter-xyz"), "{msg}");
    assert!(msg.contains("mesa-vulkan-drivers"), "{msg}");
}

/// The same through the environment variable, in a child process (the environment is
/// process-wide and setting it is `unsafe` in edition 2024).
#[test]
fn the_adapter_env_override_is_honoured() {
    const CHILD: &str = "HYBRID_GPU_TEST_CHILD";
    const NAME: &str = "the_adapter_env_override_is_honoured";
    if std::env::var_os(CHILD).is_some() {
        let err = GpuContext::from_env().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, GpuError::NoAdapter { .. }), "{msg}");
        assert!(
            msg.contains(ADAPTER_ENV) && msg.contains("no-such-adapter-xyz"),
            "{msg}"
        );
        assert!(msg.contains("mesa-vulkan-drivers"), "{msg}");
        println!("child saw: {msg}");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env(ADAPTER_ENV, "no-such-adapter-xyz")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed") && stdout.contains("child saw:"),
        "child did not run the check:\n{stdout}"
    );
}

#[test]
fn a_lost_device_turns_unhealthy_and_operations_fail_without_panicking() {
    let Some(ctx) = common::new_context() else {
        return;
    };
    let kept = ctx.upload_f32(&[1.0; 8], &[8]).unwrap();
    assert!(ctx.is_healthy());
    ctx.simulate_device_loss();
    assert!(!ctx.is_healthy(), "device-lost callback did not run");
    let err = ctx.upload_f32(&[1.0], &[1]).unwrap_err();
    assert!(matches!(err, GpuError::DeviceLost { .. }), "{err}");
    assert!(err.to_string().contains("device lost"), "{err}");
    assert!(matches!(
        ctx.batch().unwrap_err(),
        GpuError::DeviceLost { .. }
    ));
    assert!(matches!(
        ctx.download_f32(&kept).unwrap_err(),
        GpuError::DeviceLost { .. }
    ));
    // The process goes on: a new context works.
    let fresh = common::new_context().unwrap();
    let t = fresh.upload_f32(&[3.0], &[1]).unwrap();
    assert_eq!(fresh.download_f32(&t).unwrap(), vec![3.0]);
}
