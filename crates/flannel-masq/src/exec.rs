//! Running iptables and nft: no shell, arguments as a vector, stdin for restore payloads,
//! stderr kept for the error.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::MasqError;

/// The programs used, found on PATH unless set (tests point them at counting wrappers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub iptables: PathBuf,
    pub iptables_save: PathBuf,
    pub iptables_restore: PathBuf,
    pub ip6tables: PathBuf,
    pub ip6tables_save: PathBuf,
    pub ip6tables_restore: PathBuf,
    pub nft: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            iptables: "iptables".into(),
            iptables_save: "iptables-save".into(),
            iptables_restore: "iptables-restore".into(),
            ip6tables: "ip6tables".into(),
            ip6tables_save: "ip6tables-save".into(),
            ip6tables_restore: "ip6tables-restore".into(),
            nft: "nft".into(),
        }
    }
}

/// Runs `program args`, feeding `stdin`; returns stdout, or an error naming the command and
/// carrying its stderr.
pub(crate) async fn run(
    program: &PathBuf,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, MasqError> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| MasqError::Spawn {
            command: command.clone(),
            source,
        })?;
    let mut write_error = None;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that fails early stops reading (EPIPE): its status and stderr say why.
        write_error = pipe.write_all(input.as_bytes()).await.err();
        // dropping the pipe closes it: end of input
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| MasqError::Pipe {
            command: command.clone(),
            source,
        })?;
    if let (true, Some(source)) = (out.status.success(), write_error) {
        return Err(MasqError::Pipe { command, source });
    }
    if !out.status.success() {
        return Err(MasqError::Failed {
            command,
            status: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            input: stdin.map(str::to_string),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn arguments_reach_the_program_verbatim_never_through_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("shell-ran");
        let injected = format!("$(touch {})", marker.display());
        let args = ["a;b", &injected, "`id`", "x && y", "*"];
        let out = run(&"/bin/echo".into(), &args, None).await.unwrap();
        assert_eq!(out, format!("{}\n", args.join(" ")));
        assert!(!marker.exists());
        // stdin is passed as data too
        let out = run(&"/bin/cat".into(), &[], Some("-A FLANNEL-FWD $(id)\n"))
            .await
            .unwrap();
        assert_eq!(out, "-A FLANNEL-FWD $(id)\n");
    }

    #[tokio::test]
    async fn a_failing_program_is_named_with_its_stderr() {
        let err = run(&"/bin/ls".into(), &["/nonexistent-flannel-path"], None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("/bin/ls /nonexistent-flannel-path"), "{err}");
        assert!(err.contains("No such file"), "{err}");
        let err = run(&"/nonexistent/iptables".into(), &["-S"], None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/iptables -S"), "{err}");
        assert!(
            err.contains("is the iptables/nftables package installed?"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_broken_input_pipe_is_not_blamed_on_a_missing_package() {
        // `true` exits without reading: the payload meets a closed pipe
        let payload = "x".repeat(4 << 20);
        let err = run(&"/bin/true".into(), &[], Some(&payload))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("talking to `/bin/true"), "{err}");
        assert!(!err.contains("installed"), "{err}");
    }
}
