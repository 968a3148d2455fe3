//! Helpers shared by the end-to-end tests: locating the workspace and its built binaries.

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A binary of the workspace built by cargo for this test profile (`target/<profile>/NAME`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    profile_dir.join(name)
}

/// The small forged model pair (`forge --profile small`, seed 42), built once per test
/// binary and cached under the target directory (the forge skips complete models).
pub fn forged_small() -> PathBuf {
    static MODELS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODELS
        .get_or_init(|| {
            // target/<profile>/deps/<test> → target/tmp, where the other tests cache it too.
            let out = workspace_bin("x")
                .parent()
                .and_then(|profile| profile.parent())
                .map_or_else(|| PathBuf::from("target"), PathBuf::from)
                .join("tmp")
                .join("forge-small");
            let forged = experts::forge::forge(&experts::forge::ForgeOptions {
                out: out.clone(),
                profile: experts::forge::ForgeProfile::small(),
                seed: 42,
                force: false,
                evaluate: false,
            });
            if let Err(e) = forged {
                panic!("forging the small pair failed: {e}");
            }
            out
        })
        .clone()
}
