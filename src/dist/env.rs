//! The launch environment of one process: torchrun's variables (spec/libtorch_from_rust.md §10.2),
//! or none of them for a single process.
//!
//! * No variable set → one process (world 1, rank 0), no store, no process group.
//! * Under torchrun (`TORCHELASTIC_USE_AGENT_STORE=True`) the elastic agent already hosts the
//!   TCPStore at MASTER_ADDR:MASTER_PORT, so every rank, rank 0 included, is a client.
//! * Launched by hand (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as for PyTorch's `env://`),
//!   rank 0 hosts the store.
//!
//! A variable that is set but empty, unparsable or inconsistent with the others is an error that
//! names it: a half-configured launch must not silently run as a single process.

use anyhow::{bail, Context, Result};

/// Every variable this module reads, in the order they are checked.
pub const VARS: [&str; 9] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_RUN_ID",
];

/// Where this process sits in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    /// Index of this process on its host; selects the CUDA device (`cuda:LOCAL_RANK`).
    pub local_rank: usize,
    pub local_world_size: usize,
    /// Rendezvous address of the TCPStore (empty for a single process).
    pub master_addr: String,
    pub master_port: u16,
    /// How many times torchrun restarted the workers; part of the store prefix so a restarted
    /// attempt never reads the keys of a failed one.
    pub restart_count: u64,
    /// torchrun's elastic agent hosts the store: every rank connects as a client.
    pub use_agent_store: bool,
    pub run_id: Option<String>,
}

impl DistEnv {
    /// A single process: world 1, rank 0.
    pub fn single() -> Self {
        DistEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            master_addr: String::new(),
            master_port: 0,
            restart_count: 0,
            use_agent_store: false,
            run_id: None,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads the variables through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let present: Vec<&str> = VARS.iter().copied().filter(|k| get(k).is_some()).collect();
        if present.is_empty() {
            return Ok(Self::single());
        }
        let raw = |k: &str| -> Result<Option<String>> {
            match get(k) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => {
                    bail!("environment variable {k} is set but empty")
                }
                Some(v) => Ok(Some(v.trim().to_string())),
            }
        };
        let required = |k: &str| -> Result<String> {
            raw(k)?.with_context(|| {
                format!(
                    "environment variable {k} is not set, but {} {} (a distributed launch needs \
                     RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; torchrun sets them all)",
                    present.join(", "),
                    if present.len() == 1 { "is" } else { "are" }
                )
            })
        };
        let number = |k: &str, v: &str| -> Result<u64> {
            v.parse::<u64>().map_err(|_| {
                anyhow::anyhow!("environment variable {k}={v:?} is not a non-negative integer")
            })
        };

        let world_size = number("WORLD_SIZE", &required("WORLD_SIZE")?)? as usize;
        if world_size == 0 {
            bail!("environment variable WORLD_SIZE=0: the world needs at least one process");
        }
        let rank = number("RANK", &required("RANK")?)? as usize;
        if rank >= world_size {
            bail!("environment variable RANK={rank} is not below WORLD_SIZE={world_size}");
        }
        let local_rank = match raw("LOCAL_RANK")? {
            Some(v) => number("LOCAL_RANK", &v)? as usize,
            // One host: the global rank is the local one.
            None => rank,
        };
        let local_world_size = match raw("LOCAL_WORLD_SIZE")? {
            Some(v) => number("LOCAL_WORLD_SIZE", &v)? as usize,
            None => world_size,
        };
        if local_world_size == 0 || local_world_size > world_size {
            bail!(
                "environment variable LOCAL_WORLD_SIZE={local_world_size} must be between 1 and \
                 WORLD_SIZE={world_size}"
            );
        }
        if local_rank >= local_world_size {
            bail!(
                "environment variable LOCAL_RANK={local_rank} is not below \
                 LOCAL_WORLD_SIZE={local_world_size}"
            );
        }

        // A world of one needs no rendezvous; torchrun still sets the address, which is fine.
        let (master_addr, master_port) = if world_size > 1 {
            let addr = required("MASTER_ADDR")?;
            let port_s = required("MASTER_PORT")?;
            (addr, parse_port(&port_s)?)
        } else {
            let addr = raw("MASTER_ADDR")?.unwrap_or_default();
            let port = match raw("MASTER_PORT")? {
                Some(p) => parse_port(&p)?,
                None => 0,
            };
            (addr, port)
        };

        let restart_count = match raw("TORCHELASTIC_RESTART_COUNT")? {
            Some(v) => number("TORCHELASTIC_RESTART_COUNT", &v)?,
            None => 0,
        };
        let use_agent_store = match raw("TORCHELASTIC_USE_AGENT_STORE")? {
            None => false,
            // torchrun writes Python's str(bool).
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => bail!(
                    "environment variable TORCHELASTIC_USE_AGENT_STORE={v:?} is not True or False"
                ),
            },
        };
        let run_id = raw("TORCHELASTIC_RUN_ID")?;
        Ok(DistEnv {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
            restart_count,
            use_agent_store,
            run_id,
        })
    }

    /// More than one process.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }

    /// Whether this process hosts the TCPStore: only rank 0, and only without torchrun's agent
    /// store (the agent already listens on MASTER_PORT; a second server there would fail to bind).
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.use_agent_store
    }

    /// Key prefix for everything stillflow writes into the store: its own namespace (the agent's
    /// rendezvous keys live in the same store) and one folder per restart attempt.
    pub fn store_prefix(&self) -> String {
        let run = self.run_id.as_deref().unwrap_or("local");
        format!("stillflow/{run}/attempt_{}", self.restart_count)
    }

    /// `rank r/W (local l/L)`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "rank {}/{} (local {}/{})",
            self.rank, self.world_size, self.local_rank, self.local_world_size
        )
    }
}

fn parse_port(v: &str) -> Result<u16> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => bail!("environment variable MASTER_PORT={v:?} is not a port number (1-65535)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<DistEnv> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_lookup(|k| m.get(k).cloned())
    }

    fn err(vars: &[(&str, &str)]) -> String {
        format!("{:#}", parse(vars).expect_err("must fail"))
    }

    const TORCHRUN_RANK1: &[(&str, &str)] = &[
        ("RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_RESTART_COUNT", "2"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_RUN_ID", "abc"),
    ];

    #[test]
    fn nothing_set_is_a_single_process() {
        let e = parse(&[]).unwrap();
        assert_eq!(e, DistEnv::single());
        assert!(!e.is_distributed());
        assert!(e.hosts_store());
    }

    #[test]
    fn torchrun_worker_is_a_store_client() {
        let e = parse(TORCHRUN_RANK1).unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (1, 4, 1, 2)
        );
        assert_eq!((e.master_addr.as_str(), e.master_port), ("node0", 29500));
        assert!(e.use_agent_store && e.is_distributed());
        assert!(!e.hosts_store());
        assert_eq!(e.store_prefix(), "stillflow/abc/attempt_2");
        // Rank 0 under the agent store is a client too.
        let mut r0 = TORCHRUN_RANK1.to_vec();
        r0[0] = ("RANK", "0");
        r0[2] = ("LOCAL_RANK", "0");
        assert!(!parse(&r0).unwrap().hosts_store());
    }

    #[test]
    fn manual_launch_rank0_hosts_the_store() {
        let base = [
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "1234"),
        ];
        let e = parse(&base).unwrap();
        assert!(e.hosts_store() && !e.use_agent_store);
        // Defaults for a single host: local rank = rank, local world = world.
        assert_eq!((e.local_rank, e.local_world_size), (0, 2));
        assert_eq!(e.store_prefix(), "stillflow/local/attempt_0");
        let mut r1 = base;
        r1[0] = ("RANK", "1");
        let e1 = parse(&r1).unwrap();
        assert!(!e1.hosts_store());
        assert_eq!(e1.local_rank, 1);
        let mut f = base.to_vec();
        f.push(("TORCHELASTIC_USE_AGENT_STORE", "False"));
        assert!(parse(&f).unwrap().hosts_store());
    }

    #[test]
    fn world_of_one_needs_no_address() {
        let e = parse(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap();
        assert!(!e.is_distributed());
        assert_eq!(e.master_port, 0);
    }

    #[test]
    fn partial_launches_name_the_missing_variable() {
        let m = err(&[("RANK", "0")]);
        assert!(
            m.contains("WORLD_SIZE is not set") && m.contains("RANK is"),
            "{m}"
        );
        let m = err(&[("WORLD_SIZE", "2")]);
        assert!(m.contains("RANK is not set"), "{m}");
        let m = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]);
        assert!(m.contains("MASTER_ADDR is not set"), "{m}");
        let m = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]);
        assert!(m.contains("MASTER_PORT is not set"), "{m}");
        // A lone elastic variable is half a launch too.
        let m = err(&[("TORCHELASTIC_RUN_ID", "x")]);
        assert!(
            m.contains("WORLD_SIZE is not set") && m.contains("TORCHELASTIC_RUN_ID"),
            "{m}"
        );
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let with = |k: &'static str, v: &'static str| -> String {
            let mut vars = TORCHRUN_RANK1.to_vec();
            for kv in vars.iter_mut() {
                if kv.0 == k {
                    kv.1 = v;
                }
            }
            err(&vars)
        };
        for (k, v, want) in [
            ("RANK", "one", "RANK=\"one\" is not a non-negative integer"),
            ("RANK", "-1", "RANK=\"-1\""),
            ("RANK", "4", "RANK=4 is not below WORLD_SIZE=4"),
            ("WORLD_SIZE", "0", "WORLD_SIZE=0"),
            (
                "LOCAL_RANK",
                "2",
                "LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2",
            ),
            (
                "LOCAL_WORLD_SIZE",
                "8",
                "LOCAL_WORLD_SIZE=8 must be between 1 and WORLD_SIZE=4",
            ),
            ("MASTER_PORT", "0", "MASTER_PORT=\"0\" is not a port number"),
            ("MASTER_PORT", "70000", "MASTER_PORT=\"70000\""),
            ("MASTER_ADDR", " ", "MASTER_ADDR is set but empty"),
            (
                "TORCHELASTIC_RESTART_COUNT",
                "x",
                "TORCHELASTIC_RESTART_COUNT=\"x\"",
            ),
            (
                "TORCHELASTIC_USE_AGENT_STORE",
                "yes",
                "TORCHELASTIC_USE_AGENT_STORE=\"yes\"",
            ),
        ] {
            let m = with(k, v);
            assert!(m.contains(want), "{k}={v}: {m}");
        }
    }
}
