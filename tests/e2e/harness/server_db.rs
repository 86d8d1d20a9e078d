//! A database of its own for one test, on the PostgreSQL or MariaDB server `scripts/test`
//! starts, read with the server's own client (so a test sees what ncps really wrote there).

use std::process::Command;

use super::random_hex;

/// A database created for one test on a server from the environment, dropped at the end.
pub struct ServerDatabase {
    /// `psql` or `mariadb`, with the flags that reach the server as its administrator.
    admin: Vec<String>,
    name: String,
    /// The URL ncps gets.
    pub url: String,
}

impl ServerDatabase {
    /// A database on the server `server` (an administrator URL) names.
    pub fn create(server: String) -> ServerDatabase {
        let parsed = url::Url::parse(&server).expect("database server URL");
        let name = format!("ncps_e2e_{}", random_hex(6));
        let admin = match parsed.scheme() {
            "postgres" | "postgresql" => vec!["psql".to_owned(), server.clone(), "-q".to_owned()],
            _ => {
                let mut admin = vec![
                    "mariadb".to_owned(),
                    "--no-defaults".to_owned(),
                    "--protocol=tcp".to_owned(),
                    "-h".to_owned(),
                    parsed.host_str().expect("server host").to_owned(),
                    "-P".to_owned(),
                    parsed.port().unwrap_or(3306).to_string(),
                    "-u".to_owned(),
                    parsed.username().to_owned(),
                ];
                if let Some(password) = parsed.password() {
                    admin.push(format!("-p{password}"));
                }
                admin
            }
        };
        let mut url = parsed.clone();
        url.set_path(&format!("/{name}"));
        let db = ServerDatabase {
            admin,
            name,
            url: url.to_string(),
        };
        db.admin_sql(&format!("CREATE DATABASE {}", db.name));
        db
    }

    fn admin_sql(&self, sql: &str) {
        let flag = if self.is_postgres() { "-c" } else { "-e" };
        let mut cmd = Command::new(&self.admin[0]);
        cmd.args(&self.admin[1..]).args([flag, sql]);
        self.run(cmd, sql);
    }

    /// Runs the client; its output, or a panic with its errors.
    fn run(&self, mut cmd: Command, sql: &str) -> String {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.admin[0]));
        assert!(
            out.status.success(),
            "{} {sql:?}: {}",
            self.admin[0],
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn is_postgres(&self) -> bool {
        self.admin[0] == "psql"
    }

    /// What `sql` prints, run with the server's own client in the test's database (tab
    /// separated, no headers): proof of what ncps wrote there, whatever ncps itself says.
    pub fn query(&self, sql: &str) -> String {
        let mut cmd = Command::new(&self.admin[0]);
        if self.is_postgres() {
            cmd.args([self.url.as_str(), "-q", "-t", "-A", "-F", "\t", "-c", sql]);
        } else {
            cmd.args(&self.admin[1..])
                .args(["-D", &self.name, "-N", "-B", "-e", sql]);
        }
        self.run(cmd, sql)
    }

    /// The single number `sql` selects.
    pub fn count(&self, sql: &str) -> u64 {
        let out = self.query(sql);
        out.parse()
            .unwrap_or_else(|_| panic!("{sql:?} printed {out:?}, not a number"))
    }
}

impl Drop for ServerDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // kept for inspection; the throwaway server goes away anyway
        }
        let drop = if self.is_postgres() {
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)
        } else {
            format!("DROP DATABASE IF EXISTS {}", self.name)
        };
        self.admin_sql(&drop);
    }
}
