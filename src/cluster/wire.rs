//! What rank 0's coordinator and each rank's rigdoctor say to each other: one JSON object per
//! line over TCP. Lines are bounded and every read has a deadline; a peer that sends garbage
//! or goes quiet is named, never waited for without end.

use crate::probe::gpu::SettledRank;
use crate::report::Report;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::Sender;

/// The longest line either side accepts: a node's report is at most a saved report's size.
const MAX_LINE: usize = crate::report::MAX_REPORT_BYTES + (1 << 20);

/// How often rank 0 says it is alive, and how long a rank waits without a word from it.
pub const BEAT: std::time::Duration = std::time::Duration::from_secs(5);
pub const SILENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// A rank introduces itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    /// The node's host name (its /proc/sys/kernel/hostname, under --sysroot).
    pub host: String,
    pub pid: u32,
    /// rigdoctor's version: ranks of another version may not speak this protocol.
    pub version: String,
    pub launcher: String,
    /// Slurm's name of the node (SLURMD_NODENAME), which may differ from its host name.
    #[serde(default)]
    pub slurm_node: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case")]
pub enum ToCoordinator {
    Hello(Hello),
    /// The node's quick check (None: another rank of this node runs it) and the CUDA devices
    /// this rank gives NCCL ranks to (empty: none, `why` says why).
    Node {
        report: Option<Box<Report>>,
        devices: Vec<i32>,
        why: Option<String>,
    },
    /// The unique id of job `job`, made by this rank's first worker (None: none was made).
    Id {
        job: u32,
        id: Option<String>,
    },
    /// This rank's NCCL ranks of job `job`, each settled, and its NCCL log's channel and
    /// warning lines.
    Ranks {
        job: u32,
        ranks: Vec<SettledRank>,
        log: Vec<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case")]
pub enum ToMember {
    /// The world is formed: run the node check.
    Welcome {
        world: usize,
    },
    /// This rank is not part of the run, and why.
    Refused {
        why: String,
    },
    /// Join job `job` as ranks `first..` of `nranks`; the first rank of the job makes the id.
    Run {
        job: u32,
        first: usize,
        nranks: usize,
    },
    Id {
        job: u32,
        id: Option<String>,
    },
    /// Rank 0 is alive (every few seconds, whatever it waits for): a rank that hears nothing
    /// for [`SILENCE`] takes rank 0 as lost, even when no connection reset ever comes (a node
    /// that lost power).
    Beat,
    /// The end: the run's exit code and verdict, the same on every rank.
    Done {
        code: u8,
        verdict: String,
    },
}

/// Write one message as a line; false when the peer is gone.
pub fn send<T: Serialize>(mut stream: &TcpStream, msg: &T) -> bool {
    let Ok(mut line) = serde_json::to_vec(msg) else {
        return false;
    };
    line.push(b'\n');
    stream.write_all(&line).and_then(|_| stream.flush()).is_ok()
}

/// What a connection's reader saw.
#[derive(Debug)]
pub enum Event<T> {
    Msg(T),
    /// The peer closed the connection, or it broke, or it sent what is not this protocol.
    Gone(String),
}

/// Read `stream` line by line on a thread of its own, each message (or its end) sent to `tx`
/// tagged with `who`. The thread ends with the connection.
pub fn spawn_reader<T: for<'de> Deserialize<'de> + Send + 'static>(
    stream: TcpStream,
    who: usize,
    tx: Sender<(usize, Event<T>)>,
) {
    let _ = std::thread::Builder::new()
        .name("cluster-reader".into())
        .spawn(move || {
            let mut r = BufReader::new(stream);
            loop {
                let event = match read_line(&mut r) {
                    Ok(Some(line)) => match serde_json::from_slice::<T>(&line) {
                        Ok(m) => Event::Msg(m),
                        Err(e) => {
                            Event::Gone(format!("it sent what is not rigdoctor's protocol ({e})"))
                        }
                    },
                    Ok(None) => Event::Gone("its connection closed".into()),
                    Err(e) => Event::Gone(format!("its connection broke ({e})")),
                };
                let end = matches!(event, Event::Gone(_));
                if tx.send((who, event)).is_err() || end {
                    return;
                }
            }
        });
}

/// One line without its newline; None at a clean end of stream.
fn read_line(r: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            if line.len() > MAX_LINE {
                "a line longer than the protocol allows"
            } else {
                "the connection ended inside a line"
            },
        ));
    }
    line.pop();
    Ok(Some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_a_cut_line_is_an_error() {
        let mut ok = std::io::Cursor::new(b"{\"a\":1}\n".to_vec());
        assert_eq!(read_line(&mut ok).unwrap().unwrap(), b"{\"a\":1}");
        assert!(read_line(&mut ok).unwrap().is_none());
        let mut cut = std::io::Cursor::new(b"{\"a\":".to_vec());
        assert!(read_line(&mut cut).is_err());
        let mut long = std::io::Cursor::new(vec![b'x'; MAX_LINE + 10]);
        assert!(read_line(&mut long).is_err());
    }
}

#[cfg(test)]
mod parse {
    use super::*;

    #[test]
    fn a_hello_reads_as_sent() {
        let h = Hello {
            rank: 1,
            world: 9,
            local_rank: 0,
            host: "evil\u{1b}[2J".into(),
            pid: 1,
            version: "0.1.0".into(),
            launcher: "flags".into(),
            slurm_node: None,
        };
        let line = serde_json::to_string(&ToCoordinator::Hello(h.clone())).unwrap();
        match serde_json::from_str::<ToCoordinator>(&line).unwrap() {
            ToCoordinator::Hello(back) => assert_eq!(back, h),
            other => panic!("{other:?}"),
        }
        assert!(serde_json::from_str::<ToCoordinator>(r#"{"msg":"hello","rank":-1}"#).is_err());
        println!("{line}");
    }
}
