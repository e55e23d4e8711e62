//! carbon-c-relay 3.7 configuration syntax → [`Config`].
//!
//! A hand-written descent over [`lexer`](super::lexer) tokens: every error names the file,
//! line and column of the token it stopped at and what was expected there. `aggregate` is
//! refused as a whole (half an aggregation would silently change what reaches the caches),
//! and so is every member or listener option this daemon cannot honour (udp, compressed
//! or TLS transports to members, `route using`), rather than being ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ast::*;
use super::include;
use super::lexer::{tokenize, Tok, Token};
use super::RuleError;
use crate::dest::addr::DestAddr;

/// Include nesting beyond this is taken for an include loop (carbon-c-relay has no guard
/// and recurses until it crashes).
const MAX_INCLUDE_DEPTH: usize = 16;

/// Reads and parses `path`, following `include`s in place.
pub fn parse_file(path: &Path) -> Result<Config, RuleError> {
    let mut cfg = Config::default();
    parse_file_into(path, &mut cfg, 0, None)?;
    Ok(cfg)
}

/// Parses configuration text; `name` is what error messages call it. `include` paths are
/// relative to the working directory, as in carbon-c-relay.
pub fn parse_str(name: &str, src: &str) -> Result<Config, RuleError> {
    let mut cfg = Config::default();
    parse_src(&Arc::from(name), src, &mut cfg, 0)?;
    Ok(cfg)
}

fn parse_file_into(
    path: &Path,
    cfg: &mut Config,
    depth: usize,
    at: Option<&Pos>,
) -> Result<(), RuleError> {
    let name: Arc<str> = Arc::from(path.display().to_string());
    let src = std::fs::read_to_string(path).map_err(|e| {
        let msg = format!("cannot read configuration {}: {e}", path.display());
        match at {
            Some(p) => p.error(&msg),
            None => RuleError {
                file: name.to_string(),
                line: 0,
                col: 0,
                msg,
            },
        }
    })?;
    parse_src(&name, &src, cfg, depth)
}

fn parse_src(name: &Arc<str>, src: &str, cfg: &mut Config, depth: usize) -> Result<(), RuleError> {
    let toks = tokenize(name, src)?;
    // "Unexpected end of file" points just after the last thing written.
    let body = src.trim_end();
    let last_line = body.rsplit('\n').next().unwrap_or("");
    let eof = Pos {
        file: name.clone(),
        line: body.matches('\n').count() as u32 + 1,
        col: last_line.chars().count() as u32 + 1,
    };
    let mut p = Parser {
        toks,
        i: 0,
        eof,
        depth,
    };
    while !p.done() {
        p.statement(cfg)?;
    }
    Ok(())
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    /// Where "unexpected end of file" points.
    eof: Pos,
    depth: usize,
}

impl Parser {
    fn done(&self) -> bool {
        self.i >= self.toks.len()
    }

    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.i)
    }

    fn pos(&self) -> Pos {
        self.peek()
            .map_or_else(|| self.eof.clone(), |t| t.pos.clone())
    }

    fn err(&self, msg: &str) -> RuleError {
        let found = match self.peek().map(|t| &t.tok) {
            None => "end of file".to_string(),
            Some(Tok::Semi) => "';'".to_string(),
            Some(Tok::Eq) => "'='".to_string(),
            Some(Tok::Word(w) | Tok::Quoted(w)) => format!("'{w}'"),
        };
        self.pos().error(&format!("{msg}, found {found}"))
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.i).cloned();
        self.i += 1;
        t
    }

    /// Consumes the bare keyword `kw` when it is next.
    fn eat(&mut self, kw: &str) -> bool {
        if self.peek().is_some_and(|t| t.is_kw(kw)) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, kw: &str) -> Result<(), RuleError> {
        if self.eat(kw) {
            Ok(())
        } else {
            Err(self.err(&format!("expected '{kw}'")))
        }
    }

    fn at_semi(&self) -> bool {
        matches!(self.peek().map(|t| &t.tok), Some(Tok::Semi))
    }

    fn semi(&mut self) -> Result<(), RuleError> {
        if self.at_semi() {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err("expected ';'"))
        }
    }

    /// A word (bare or quoted) that is not one of `stops` when bare.
    fn word(&mut self, what: &str) -> Result<Expr, RuleError> {
        match self.peek() {
            Some(
                t @ Token {
                    tok: Tok::Word(_) | Tok::Quoted(_),
                    ..
                },
            ) => {
                let e = Expr {
                    text: t.text().unwrap_or_default().to_string(),
                    pos: t.pos.clone(),
                };
                self.i += 1;
                Ok(e)
            }
            _ => Err(self.err(&format!("expected {what}"))),
        }
    }

    /// Words up to (not including) a bare keyword of `stops` or `;`.
    fn words_until(&mut self, stops: &[&str]) -> Vec<Expr> {
        let mut out = Vec::new();
        while let Some(t) = self.peek() {
            if t.text().is_none() || stops.iter().any(|k| t.is_kw(k)) {
                break;
            }
            out.push(Expr {
                text: t.text().unwrap_or_default().to_string(),
                pos: t.pos.clone(),
            });
            self.i += 1;
        }
        out
    }

    fn number(&mut self, what: &str) -> Result<u64, RuleError> {
        let pos = self.pos();
        let w = self.word(what)?;
        w.text
            .parse()
            .map_err(|_| pos.error(&format!("expected {what}, found '{}'", w.text)))
    }

    fn statement(&mut self, cfg: &mut Config) -> Result<(), RuleError> {
        let pos = self.pos();
        let Some(t) = self.next() else { return Ok(()) };
        match t.tok {
            Tok::Semi => Ok(()),
            Tok::Word(w) => match w.as_str() {
                "cluster" => {
                    let c = self.cluster(pos)?;
                    cfg.clusters.push(c);
                    Ok(())
                }
                "match" => {
                    let m = self.match_rule(pos)?;
                    cfg.rules.push(Rule::Match(m));
                    Ok(())
                }
                "rewrite" => {
                    let expr = self.word("a regular expression after 'rewrite'")?;
                    self.expect("into")?;
                    let replacement = self.word("a replacement after 'into'")?;
                    self.semi()?;
                    cfg.rules.push(Rule::Rewrite(RewriteDef {
                        pos,
                        expr,
                        replacement,
                    }));
                    Ok(())
                }
                "include" => self.include(cfg, &pos),
                "listen" => {
                    let l = self.listen(pos)?;
                    cfg.listen.push(l);
                    Ok(())
                }
                "statistics" => {
                    cfg.statistics = Some(self.statistics()?);
                    Ok(())
                }
                "send" => {
                    // Deprecated `send statistics to CLUSTER… [stop];`.
                    self.expect("statistics")?;
                    let mut st = cfg.statistics.take().unwrap_or_default();
                    self.statistics_send_to(&mut st)?;
                    self.semi()?;
                    cfg.statistics = Some(st);
                    Ok(())
                }
                "aggregate" => Err(pos.error(
                    "'aggregate' is not supported yet: remove the aggregate rules (or keep this \
                     configuration on carbon-c-relay); nothing of this file was applied",
                )),
                other => Err(pos.error(&format!(
                    "unknown statement '{other}': expected cluster, match, rewrite, include, \
                     listen or statistics"
                ))),
            },
            Tok::Quoted(w) => {
                Err(pos.error(&format!("unexpected string \"{w}\": expected a statement")))
            }
            Tok::Eq => Err(pos.error("unexpected '=': expected a statement")),
        }
    }

    fn include(&mut self, cfg: &mut Config, pos: &Pos) -> Result<(), RuleError> {
        let pat = self.word("a path or glob after 'include'")?;
        self.semi()?;
        if self.depth >= MAX_INCLUDE_DEPTH {
            return Err(pat.pos.error(&format!(
                "includes nested deeper than {MAX_INCLUDE_DEPTH}: is '{}' including itself?",
                pat.text
            )));
        }
        let files = include::expand(&pat.text).map_err(|m| pat.pos.error(&m))?;
        for f in files {
            parse_file_into(&f, cfg, self.depth + 1, Some(pos))?;
        }
        Ok(())
    }

    fn cluster(&mut self, pos: Pos) -> Result<ClusterDef, RuleError> {
        let name = self.word("a cluster name")?.text;
        let kpos = self.pos();
        let kw = self.word("a cluster type")?.text;
        let kind = match kw.as_str() {
            "forward" => ClusterKind::Forward,
            "any_of" => ClusterKind::AnyOf,
            "failover" => ClusterKind::Failover,
            "carbon_ch" => ClusterKind::CarbonCh,
            "fnv1a_ch" => ClusterKind::Fnv1aCh,
            "jump_fnv1a_ch" => ClusterKind::JumpFnv1aCh,
            "file" => ClusterKind::File { ip: self.eat("ip") },
            other => {
                return Err(kpos.error(&format!(
                    "unknown cluster type '{other}': expected forward, any_of, failover, \
                     carbon_ch, fnv1a_ch, jump_fnv1a_ch or file"
                )))
            }
        };
        let mut c = ClusterDef {
            pos,
            name,
            kind,
            useall: false,
            replication: 1,
            dynamic: false,
            members: Vec::new(),
        };
        if matches!(
            c.kind,
            ClusterKind::Forward | ClusterKind::AnyOf | ClusterKind::Failover
        ) {
            c.useall = self.eat("useall");
        }
        if c.kind.is_hash() {
            if self.eat("replication") {
                let rpos = self.pos();
                let n = self.number("a replication count")?;
                if !(1..=255).contains(&n) {
                    return Err(rpos.error("replication count must be between 1 and 255"));
                }
                c.replication = n as usize;
            }
            c.dynamic = self.eat("dynamic");
        }
        while !self.at_semi() {
            let m = match c.kind {
                ClusterKind::File { .. } => {
                    Member::File(PathBuf::from(self.word("a file path")?.text))
                }
                _ => self.member()?,
            };
            c.members.push(m);
        }
        if c.members.is_empty() {
            return Err(self.err(&format!("cluster '{}' needs at least one member", c.name)));
        }
        self.semi()?;
        Ok(c)
    }

    /// `host[:port][=instance] [proto tcp] [type linemode] [transport plain [ssl]]`.
    fn member(&mut self) -> Result<Member, RuleError> {
        let addr = self.word("a member address (host[:port])")?;
        let instance = if matches!(self.peek().map(|t| &t.tok), Some(Tok::Eq)) {
            self.i += 1;
            Some(self.word("an instance name after '='")?.text)
        } else {
            None
        };
        let mut dest = member_addr(&addr)?;
        dest.instance = instance;
        loop {
            let opos = self.pos();
            if self.eat("proto") {
                let p = self.word("udp or tcp after 'proto'")?.text;
                match p.as_str() {
                    "tcp" => {}
                    "udp" => {
                        return Err(opos.error("members over udp are not supported: use proto tcp"))
                    }
                    other => {
                        return Err(opos.error(&format!("unknown proto '{other}': expected tcp")))
                    }
                }
            } else if self.eat("type") {
                let t = self.word("linemode after 'type'")?.text;
                if t != "linemode" {
                    return Err(opos.error(&format!(
                        "member type '{t}' is not supported: only linemode"
                    )));
                }
            } else if self.eat("transport") {
                let t = self.word("a transport after 'transport'")?.text;
                if t != "plain" {
                    return Err(opos.error(&format!(
                        "transport '{t}' (compressed) to members is not supported yet: use \
                         transport plain [ssl]"
                    )));
                }
                if self.eat("ssl") {
                    dest.tls = true;
                } else if self.peek().is_some_and(|t| t.is_kw("mtls")) {
                    return Err(opos.error(
                        "transport plain mtls CERT KEY is not supported: write transport plain \
                         ssl and give the client certificate with -destination-client-cert and \
                         -destination-client-key",
                    ));
                }
            } else {
                break;
            }
        }
        Ok(Member::Tcp(dest))
    }

    fn match_rule(&mut self, pos: Pos) -> Result<MatchDef, RuleError> {
        const KW: [&str; 3] = ["validate", "send", "route"];
        let mut m = MatchDef {
            pos,
            exprs: Vec::new(),
            validate: None,
            send_to: Vec::new(),
            blackhole: false,
            stop: false,
        };
        if !self.eat("*") {
            m.exprs = self.words_until(&KW);
            if m.exprs.is_empty() {
                return Err(self.err("expected '*' or an expression after 'match'"));
            }
        }
        if self.eat("validate") {
            let expr = self.word("an expression after 'validate'")?;
            self.expect("else")?;
            let apos = self.pos();
            let log = match self.word("log or drop after 'else'")?.text.as_str() {
                "log" => true,
                "drop" => false,
                other => return Err(apos.error(&format!("expected log or drop, found '{other}'"))),
            };
            m.validate = Some(Validate { expr, log });
        }
        if self.peek().is_some_and(|t| t.is_kw("route")) {
            return Err(self.pos().error(
                "'route using' is not supported: remove it (it only matters for aggregators)",
            ));
        }
        if self.eat("send") {
            self.expect("to")?;
            if self.eat("blackhole") {
                m.blackhole = true;
            } else {
                m.send_to = self.words_until(&["stop"]);
                if m.send_to.is_empty() {
                    return Err(self.err("expected a cluster name or blackhole after 'send to'"));
                }
            }
        } else if m.validate.is_none() {
            return Err(self.err("expected 'send to' or 'validate'"));
        }
        m.stop = self.eat("stop");
        self.semi()?;
        Ok(m)
    }

    fn listen(&mut self, pos: Pos) -> Result<Listen, RuleError> {
        self.expect("type")?;
        self.expect("linemode")?;
        let mut l = Listen {
            pos,
            transport: "plain".into(),
            tls: None,
            receptors: Vec::new(),
        };
        if self.eat("transport") {
            l.transport = self.word("a transport")?.text;
            let tls = ["ssl", "mtls"].into_iter().find(|k| self.eat(k));
            if let Some(kind) = tls {
                let cert = self.word("a certificate path")?.text;
                l.tls = Some((kind.to_string(), PathBuf::from(cert)));
                // protomin/protomax/ciphers/ciphersuites take one argument each.
                while ["protomin", "protomax", "ciphers", "ciphersuites"]
                    .iter()
                    .any(|k| self.eat(k))
                {
                    self.word("a value")?;
                }
            }
        }
        while !self.at_semi() {
            let addr = self
                .word("a listen address ([interface:]port or path)")?
                .text;
            self.expect("proto")?;
            let ppos = self.pos();
            let proto = self.word("tcp, udp or unix after 'proto'")?.text;
            if !["tcp", "udp", "unix"].contains(&proto.as_str()) {
                return Err(ppos.error(&format!(
                    "unknown proto '{proto}': expected tcp, udp or unix"
                )));
            }
            l.receptors.push(Receptor { addr, proto });
        }
        if l.receptors.is_empty() {
            return Err(self.err("expected at least one listen address"));
        }
        self.semi()?;
        Ok(l)
    }

    fn statistics(&mut self) -> Result<Statistics, RuleError> {
        let mut st = Statistics::default();
        if self.eat("submit") {
            self.expect("every")?;
            let ipos = self.pos();
            let n = self.number("an interval in seconds")?;
            if n == 0 {
                return Err(ipos.error("interval must be > 0"));
            }
            st.interval_secs = Some(n);
            self.expect("seconds")?;
        }
        if self.eat("reset") {
            self.expect("counters")?;
            self.expect("after")?;
            self.expect("interval")?;
            st.reset_counters = true;
        }
        if self.eat("prefix") {
            self.expect("with")?;
            st.prefix = Some(self.word("a prefix")?.text);
        }
        if self.eat("send") {
            self.statistics_send_to(&mut st)?;
        }
        self.semi()?;
        Ok(st)
    }

    /// `to CLUSTER… [stop]` of a statistics section's `send` (or the deprecated
    /// top-level `send statistics`).
    fn statistics_send_to(&mut self, st: &mut Statistics) -> Result<(), RuleError> {
        self.expect("to")?;
        st.send_to = self
            .words_until(&["stop"])
            .into_iter()
            .map(|e| e.text)
            .collect();
        st.stop = self.eat("stop");
        Ok(())
    }
}

/// `host[:port]` as carbon-c-relay reads it: port 2003 when absent; an IPv6 address is
/// bracketed or followed by a port (`::1:2003` is host `::1`, port 2003).
fn member_addr(e: &Expr) -> Result<DestAddr, RuleError> {
    let s = e.text.as_str();
    let bad = |m: &str| e.pos.error(&format!("member '{s}': {m}"));
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or_else(|| bad("unterminated '['"))?;
        let host = &s[..end + 2];
        match &rest[end + 1..] {
            "" => (host.to_string(), None),
            p => (
                host.to_string(),
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected ':' after ']'"))?,
                ),
            ),
        }
    } else if s.matches(':').count() > 1 {
        let (h, p) = s.rsplit_once(':').unwrap_or((s, ""));
        (format!("[{h}]"), Some(p))
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    let port = match port {
        None => 2003,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad("invalid port (1-65535 expected)")),
        },
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("empty host"));
    }
    Ok(DestAddr {
        host,
        port,
        instance: None,
        tls: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_plain_ssl_marks_a_member_tls_and_mtls_is_refused_with_the_flags_to_use() {
        let c = |text: &str| crate::rules::Rules::from_str("t.conf", text);
        let r = c("cluster a forward 10.0.0.1:2003 transport plain ssl 10.0.0.2 proto tcp transport plain;\nmatch * send to a;\n").unwrap();
        let tls: Vec<bool> = r.tcp_members().iter().map(|d| d.tls).collect();
        assert_eq!(tls, vec![true, false]);
        let e = c("cluster a forward 10.0.0.1:2003 transport plain mtls c.pem k.pem;\nmatch * send to a;\n").unwrap_err().to_string();
        assert!(
            e.contains("t.conf:1:") && e.contains("-destination-client-cert"),
            "{e}"
        );
        let e = c("cluster a forward 10.0.0.1:2003 transport gzip;\nmatch * send to a;\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("transport 'gzip'"), "{e}");
    }

    #[test]
    fn parses_every_construct() {
        let cfg = parse_str(
            "t.conf",
            "cluster c carbon_ch replication 2 dynamic 10.0.0.1:2004=a 10.0.0.2=b proto tcp;\n\
             cluster f file ip /tmp/x /tmp/y;\n\
             cluster a any_of useall h1 h2:2005;\n\
             match ^a\\. b validate ^[0-9] else drop send to c a stop;\n\
             match * validate x else log;\n\
             rewrite ^(x)\\.y into \\_1;\n\
             listen type linemode 2003 proto tcp /tmp/s proto unix;\n\
             statistics submit every 10 seconds prefix with p.\\1 send to c stop;",
        )
        .unwrap();
        assert_eq!(cfg.clusters.len(), 3);
        assert_eq!(cfg.clusters[0].replication, 2);
        assert!(cfg.clusters[0].dynamic);
        assert_eq!(cfg.clusters[0].members[1].to_string(), "10.0.0.2:2003:b");
        assert_eq!(cfg.clusters[1].kind, ClusterKind::File { ip: true });
        assert!(cfg.clusters[2].useall);
        assert_eq!(cfg.rules.len(), 3);
        let Rule::Match(m) = &cfg.rules[0] else {
            panic!()
        };
        assert_eq!(m.exprs.len(), 2);
        assert!(m.stop && !m.validate.as_ref().unwrap().log);
        assert_eq!(cfg.listen[0].receptors.len(), 2);
        assert_eq!(cfg.statistics.unwrap().interval_secs, Some(10));
    }

    #[test]
    fn an_error_in_an_included_file_names_that_file() {
        let d = tempfile::tempdir().unwrap();
        let inc = d.path().join("inc.conf");
        std::fs::write(
            &inc,
            "cluster a forward 10.0.0.1;\n\nmatch * send to a stop\n",
        )
        .unwrap();
        let main = d.path().join("main.conf");
        std::fs::write(&main, format!("# main\ninclude {};\n", inc.display())).unwrap();
        let e = parse_file(&main).unwrap_err();
        assert_eq!(e.file, inc.display().to_string());
        assert_eq!((e.line, e.col), (3, 23), "{e}");
        let e = parse_str("t.conf", "include /nonexistent/polymur-*.conf;").unwrap_err();
        assert!(
            e.msg.contains("did not match") || e.msg.contains("No such"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_line_column() {
        let e =
            parse_str("t.conf", "cluster c forward 10.0.0.1;\nmatch * send to c\n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 18), "{e}");
        assert!(e.msg.contains("expected ';'"), "{e}");
        let e = parse_str("t.conf", "\n  aggregate ^x every 10 seconds;").unwrap_err();
        assert_eq!((e.line, e.col), (2, 3));
        assert!(e.msg.contains("'aggregate' is not supported"), "{e}");
        let e = parse_str("t.conf", "cluster c forward 10.0.0.1 proto udp;").unwrap_err();
        assert!(e.msg.contains("udp"), "{e}");
    }
}
