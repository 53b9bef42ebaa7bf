//! Links stillflow against the libtorch that torch-sys found, and compiles the C++ shim (csrc/).
//!
//! * `DEP_TCH_LIBTORCH_LIB` comes from torch-sys (`links = "tch"`); we depend on it directly to see it.
//! * rpath to torch/lib so binaries run without LD_LIBRARY_PATH.
//! * `--no-as-needed -ltorch` keeps libtorch_cuda in NEEDED where it exists, so its static
//!   initialisers register the CUDA backend (tch-rs #329/#907/#980).
//! * The shim's CPU part is always compiled; its CUDA part only with feature `cuda`.
use std::path::{Path, PathBuf};

fn main() {
    let lib = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(l) => PathBuf::from(l),
        Err(_) => panic!("DEP_TCH_LIBTORCH_LIB unset: torch-sys must be a direct dependency"),
    };
    let root = lib
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| lib.clone());
    let nv = root.parent().map(|p| p.join("nvidia")).unwrap_or_default();
    let cuda = std::env::var_os("CARGO_FEATURE_CUDA").is_some();

    let mut inc = vec![
        root.join("include"),
        root.join("include/torch/csrc/api/include"),
    ];
    if cuda {
        if let Ok(c) = std::env::var("CUDA_HOME") {
            inc.push(PathBuf::from(c).join("include"));
        }
        for sub in ["cu13/include", "cuda_runtime/include", "nccl/include"] {
            let p = nv.join(sub);
            if p.exists() {
                inc.push(p);
            }
        }
    }
    let mut files = vec![];
    for f in [
        "csrc/shim_cpu.cpp",
        "csrc/shim_attn.cpp",
        "csrc/shim_dist.cpp",
    ] {
        if Path::new(f).exists() {
            files.push(f);
        }
    }
    if cuda && Path::new("csrc/shim_cuda.cpp").exists() {
        files.push("csrc/shim_cuda.cpp");
    }
    println!("cargo:rerun-if-changed=csrc");
    let version = std::fs::read_to_string(root.join("version.py"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches('\'').to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=STILLFLOW_TORCH_VERSION={version}");
    println!("cargo:rerun-if-changed=build.rs");
    if !files.is_empty() {
        let mut b = cc::Build::new();
        b.cpp(true)
            .pic(true)
            .warnings(false)
            .std("c++17")
            .includes(&inc);
        b.define("_GLIBCXX_USE_CXX11_ABI", "1");
        // shim_dist.cpp: the wheel's libtorch_cpu has ProcessGroupGloo, but its header only exists
        // under USE_C10D_GLOO and includes Gloo headers the wheel lacks (csrc/gloo_decls/README.md).
        b.define("USE_C10D_GLOO", None).include("csrc/gloo_decls");
        if cuda {
            b.define("STILLFLOW_CUDA", "1")
                .define("USE_C10D_NCCL", None);
        }
        b.flag_if_supported("-O2");
        for f in &files {
            b.file(f);
        }
        b.compile("stillflow_shim");
    }
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if cuda {
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        let cudart = nv.join("cu13/lib");
        println!("cargo:rustc-link-search=native={}", cudart.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", cudart.display());
        println!("cargo:rustc-link-arg=-l:libcudart.so.13");
        let nccl = nv.join("nccl/lib");
        if nccl.exists() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", nccl.display());
        }
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // Keep libtorch.so (and through it libtorch_cuda.so) even though no symbol of it is referenced.
    if lib.join("libtorch_cuda.so").exists() || lib.join("libtorch.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-ltorch_cuda");
        }
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
