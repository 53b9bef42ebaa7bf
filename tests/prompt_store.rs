//! The prompt-embeddings file (`text::store`): ragged rows written streaming and read lazily per
//! batch, the older padded `cond` layout, clear errors for broken files, and a toy training run
//! that takes its prompts from such a file through `prompt_source`.

mod common;

use std::path::Path;
use stillflow::text::store::{write, EmbeddingsFile};
use tch::{Device, Kind, Tensor};

fn rows(lens: &[i64], dim: i64, kind: Kind) -> Vec<Tensor> {
    tch::manual_seed(3);
    lens.iter()
        .map(|&l| Tensor::randn([l, dim], (Kind::Float, Device::Cpu)).to_kind(kind))
        .collect()
}

#[test]
fn ragged_rows_round_trip_and_batches_pad_with_zeros() {
    for kind in [Kind::Float, Kind::BFloat16] {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("e.safetensors");
        let lens = [3i64, 1, 5];
        let r = rows(&lens, 8, kind);
        let uncond = Tensor::ones([1, 2, 8], (kind, Device::Cpu));
        write(&p, 8, kind, &lens, &uncond, |i| Ok(r[i].shallow_clone())).unwrap();
        let f = EmbeddingsFile::open(&p).unwrap();
        assert_eq!((f.len(), f.dim()), (3, 8));
        for (i, want) in r.iter().enumerate() {
            let got = f.rows(i).unwrap();
            assert_eq!(got.kind(), kind);
            assert!(got.equal(want), "row {i}");
        }
        assert!(f.uncond().equal(&uncond));
        let b = f.batch(&[2, 1]).unwrap();
        assert_eq!(b.size(), vec![2, 5, 8]);
        assert!(b.get(1).narrow(0, 0, 1).equal(&r[1]));
        assert_eq!(
            b.get(1)
                .narrow(0, 1, 4)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
        // Also a plain safetensors file for other tools: tch reads every tensor.
        let all = Tensor::read_safetensors(&p).unwrap();
        let tokens = &all.iter().find(|(n, _)| n == "tokens").unwrap().1;
        assert_eq!(tokens.size(), vec![9, 8]);
        assert!(f.rows(3).is_err());
    }
}

#[test]
fn padded_cond_files_are_read_too() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("old.safetensors");
    let cond = Tensor::arange(2 * 3 * 4, (Kind::Float, Device::Cpu)).reshape([2, 3, 4]);
    let uncond = Tensor::zeros([1, 3, 4], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(&[("cond", &cond), ("uncond", &uncond)], &p).unwrap();
    let f = EmbeddingsFile::open(&p).unwrap();
    assert_eq!(f.len(), 2);
    assert!(f
        .batch(&[1, 0])
        .unwrap()
        .equal(&cond.index_select(0, &Tensor::from_slice(&[1i64, 0]))));
}

fn err(p: &Path) -> String {
    format!("{:#}", EmbeddingsFile::open(p).err().expect("an error"))
}

#[test]
fn broken_files_name_the_file_and_what_is_missing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("e.safetensors");
    let lens = [2i64, 2];
    let r = rows(&lens, 4, Kind::Float);
    let u = Tensor::zeros([1, 1, 4], (Kind::Float, Device::Cpu));
    write(&p, 4, Kind::Float, &lens, &u, |i| Ok(r[i].shallow_clone())).unwrap();
    // Truncated: the rows are cut off.
    let bytes = std::fs::read(&p).unwrap();
    let cut = d.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 8]).unwrap();
    let f = EmbeddingsFile::open(&cut).unwrap();
    let e = format!("{:#}", f.rows(1).unwrap_err());
    assert!(
        e.contains("cut.safetensors") && e.contains("prompt 1"),
        "{e}"
    );
    // Not a safetensors file; no `uncond`.
    let junk = d.path().join("junk.safetensors");
    std::fs::write(&junk, b"hello").unwrap();
    assert!(err(&junk).contains("junk.safetensors"));
    let nou = d.path().join("nou.safetensors");
    Tensor::write_safetensors(
        &[(
            "cond",
            &Tensor::zeros([1, 1, 4], (Kind::Float, Device::Cpu)),
        )],
        &nou,
    )
    .unwrap();
    let e = err(&nou);
    assert!(e.contains("uncond") && e.contains("nou.safetensors"), "{e}");
    // A row of the wrong length is refused while writing, and no file is left under the name.
    let bad = d.path().join("bad.safetensors");
    let e = write(&bad, 4, Kind::Float, &lens, &u, |_| {
        Ok(Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)))
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("prompt 0"), "{e}");
    assert!(!bad.exists());
}

#[test]
fn toy_training_reads_its_prompts_from_an_embeddings_file() {
    // The toy generator's text_dim: prompt_source reads a batch of rows per step.
    let d = tempfile::tempdir().unwrap();
    let dim = common::cfg("toy_dmd", d.path(), &[]).toy.text_dim;
    let file = |name: &str, dim: i64| {
        let p = d.path().join(name);
        let lens = [2i64, 4, 3];
        let r = rows(&lens, dim, Kind::Float);
        let u = Tensor::zeros([1, 1, dim], (Kind::Float, Device::Cpu));
        write(
            &p,
            dim,
            Kind::Float,
            &lens,
            &u,
            |i| Ok(r[i].shallow_clone()),
        )
        .unwrap();
        format!("data_path='{}'", p.display())
    };
    let dp = file("p.safetensors", dim);
    let mut sets: Vec<&str> = common::SMALL.to_vec();
    sets.extend(["max_steps=3", dp.as_str()]);
    let report = common::run(common::cfg("toy_dmd", &d.path().join("run"), &sets));
    assert_eq!(report.end_step, 3);
    // Embeddings of another width are refused at build time, naming the file and both sizes.
    let dp = file("wide.safetensors", dim + 8);
    let mut sets: Vec<&str> = common::SMALL.to_vec();
    sets.extend(["max_steps=3", dp.as_str()]);
    let Err(e) = stillflow::runtime::train(
        common::cfg("toy_dmd", &d.path().join("run2"), &sets),
        &stillflow::runtime::RunOptions {
            resume: false,
            quiet: true,
        },
    ) else {
        panic!("embeddings of the wrong width must be refused");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("wide.safetensors") && e.contains("text_dim"),
        "{e}"
    );
}
