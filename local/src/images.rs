//! Which local program runs for a container image.
//!
//! The local mesh has no container runtime: a container's image names a program on this
//! machine. The rule: the image reference loses its registry (`docker.io/`), `library/`, its
//! tag and digest; what is left (`istio/examples-bookinfo-reviews-v2`) is looked up in the
//! table. A table entry gives the program's command line and environment, as the image's
//! entrypoint and `ENV` lines would. The container's own `command`, `args` and `env` apply on
//! top, as they do on Kubernetes.
//!
//! The built-in table covers Keel's Bookinfo images and Istio's own
//! (`istio/examples-bookinfo-*`), so Istio's bookinfo.yaml runs unchanged, and fluentd's
//! (`keel-fluentd`: the forward input printing what arrives), so the logging walkthrough's
//! fluentd-es Deployment runs; Elasticsearch and Kibana have no local program. Users add or
//! replace entries with a YAML file (`$KEEL_HOME/images.yaml`):
//!
//! ```yaml
//! images:
//! - image: example/hello
//!   command: [/usr/local/bin/hello, --port, "8080"]
//!   env: {GREETING: hi}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// The image without registry, tag or digest.
    pub image: String,
    /// The program and its arguments; a program without a `/` is found next to Keel's own
    /// binaries, then on `PATH`.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageFile {
    images: Vec<ImageEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(
        "no local program for image \"{image}\" (looked up as \"{repository}\"); add it to {table} (see `keelctl up --help`)"
    )]
    Unknown {
        image: String,
        repository: String,
        table: String,
    },
}

/// The image-to-program table.
#[derive(Clone, Debug)]
pub struct ImageTable {
    entries: BTreeMap<String, ImageEntry>,
    /// Where users extend it, named in errors.
    user_file: PathBuf,
}

fn entry(image: &str, command: &str, env: &[(&str, &str)]) -> ImageEntry {
    ImageEntry {
        image: image.to_owned(),
        command: vec![command.to_owned()],
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

impl ImageTable {
    /// The built-in entries: Keel's Bookinfo images and Istio's.
    pub fn builtin(user_file: PathBuf) -> ImageTable {
        let reviews_v1 = [("ENABLE_RATINGS", "false")];
        let reviews_v2 = [("ENABLE_RATINGS", "true"), ("STAR_COLOR", "black")];
        let reviews_v3 = [("ENABLE_RATINGS", "true"), ("STAR_COLOR", "red")];
        let list = [
            entry("keel/bookinfo-productpage", "bookinfo-productpage", &[]),
            entry("keel/bookinfo-details", "bookinfo-details", &[]),
            entry("keel/bookinfo-reviews", "bookinfo-reviews", &[]),
            entry("keel/bookinfo-ratings", "bookinfo-ratings", &[]),
            entry(
                "istio/examples-bookinfo-productpage-v1",
                "bookinfo-productpage",
                &[],
            ),
            entry(
                "istio/examples-bookinfo-details-v1",
                "bookinfo-details",
                &[],
            ),
            entry(
                "istio/examples-bookinfo-details-v2",
                "bookinfo-details",
                &[],
            ),
            entry(
                "istio/examples-bookinfo-ratings-v1",
                "bookinfo-ratings",
                &[],
            ),
            entry(
                "istio/examples-bookinfo-ratings-v2",
                "bookinfo-ratings",
                &[],
            ),
            entry(
                "istio/examples-bookinfo-reviews-v1",
                "bookinfo-reviews",
                &reviews_v1,
            ),
            entry(
                "istio/examples-bookinfo-reviews-v2",
                "bookinfo-reviews",
                &reviews_v2,
            ),
            entry(
                "istio/examples-bookinfo-reviews-v3",
                "bookinfo-reviews",
                &reviews_v3,
            ),
            // Fluentd as the logging walkthrough deploys it: the forward input, events printed
            // as out_stdout does (`keelctl logs -n logging deploy/fluentd-es`). Outputs the
            // image's config names (elasticsearch) are not run.
            entry(
                "google-containers/fluentd-elasticsearch",
                "keel-fluentd",
                &[],
            ),
            entry("fluentd-elasticsearch", "keel-fluentd", &[]),
            entry("fluent/fluentd", "keel-fluentd", &[]),
            entry("fluentd", "keel-fluentd", &[]),
        ];
        ImageTable {
            entries: list.into_iter().map(|e| (e.image.clone(), e)).collect(),
            user_file,
        }
    }

    /// The built-in table with the user's file on top, when it exists.
    pub fn load(user_file: &Path) -> Result<ImageTable, ImageError> {
        let mut table = ImageTable::builtin(user_file.to_owned());
        let text = match std::fs::read_to_string(user_file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(table),
            Err(e) => {
                return Err(ImageError::File {
                    path: user_file.to_owned(),
                    reason: e.to_string(),
                });
            }
        };
        table
            .extend_from_yaml(&text)
            .map_err(|reason| ImageError::File {
                path: user_file.to_owned(),
                reason,
            })?;
        Ok(table)
    }

    /// Adds (or replaces) entries from a YAML text in the user file's format.
    pub fn extend_from_yaml(&mut self, text: &str) -> Result<(), String> {
        let docs = keel_config::yaml::parse_documents(text).map_err(|e| e.to_string())?;
        let value = docs
            .into_iter()
            .next()
            .map(|d| d.value)
            .ok_or_else(|| "empty file; expected `images:` with a list".to_owned())?;
        let file: ImageFile = serde_json::from_value(value).map_err(|e| e.to_string())?;
        for (i, e) in file.images.into_iter().enumerate() {
            if e.command.is_empty() || e.command[0].is_empty() {
                return Err(format!("images[{i}].command: must name a program"));
            }
            let key = repository(&e.image).to_owned();
            if key.is_empty() {
                return Err(format!("images[{i}].image: must not be empty"));
            }
            self.entries.insert(key, e);
        }
        Ok(())
    }

    pub fn lookup(&self, image: &str) -> Result<&ImageEntry, ImageError> {
        let repo = repository(image);
        self.entries.get(repo).ok_or_else(|| ImageError::Unknown {
            image: image.to_owned(),
            repository: repo.to_owned(),
            table: self.user_file.display().to_string(),
        })
    }
}

/// `docker.io/istio/examples-bookinfo-reviews-v2:1.8.0@sha256:...` ->
/// `istio/examples-bookinfo-reviews-v2`.
pub fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    // A tag is a ':' after the last '/' (a ':' before it belongs to a registry port).
    let image = match (image.rfind(':'), image.rfind('/')) {
        (Some(colon), Some(slash)) if colon > slash => &image[..colon],
        (Some(colon), None) => &image[..colon],
        _ => image,
    };
    // A first component with a '.' or ':' (or `localhost`) is a registry.
    let image = match image.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest
        }
        _ => image,
    };
    image.strip_prefix("library/").unwrap_or(image)
}

/// Finds a program: a path is taken as it is; a bare name is looked for in `bin_dir` (where
/// Keel's binaries are), then on `PATH`.
pub fn find_program(name: &str, bin_dir: &Path) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let local = bin_dir.join(name);
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_lose_registry_tag_and_digest() {
        for (image, repo) in [
            (
                "istio/examples-bookinfo-reviews-v2:1.8.0",
                "istio/examples-bookinfo-reviews-v2",
            ),
            (
                "docker.io/istio/examples-bookinfo-details-v1:1.8.0",
                "istio/examples-bookinfo-details-v1",
            ),
            (
                "localhost:5000/keel/bookinfo-ratings:0.1",
                "keel/bookinfo-ratings",
            ),
            ("nginx", "nginx"),
            ("library/nginx:1.25", "nginx"),
            ("docker.io/library/nginx@sha256:abc", "nginx"),
            ("keel/bookinfo-details", "keel/bookinfo-details"),
        ] {
            assert_eq!(repository(image), repo, "{image}");
        }
    }

    #[test]
    fn istio_images_map_to_the_samples_with_their_versions() {
        let t = ImageTable::builtin("/x/images.yaml".into());
        let v2 = t
            .lookup("docker.io/istio/examples-bookinfo-reviews-v2:1.8.0")
            .unwrap();
        assert_eq!(v2.command, ["bookinfo-reviews"]);
        assert_eq!(v2.env["STAR_COLOR"], "black");
        assert_eq!(
            t.lookup("istio/examples-bookinfo-reviews-v1:1.5.0")
                .unwrap()
                .env["ENABLE_RATINGS"],
            "false"
        );
        let err = t.lookup("example/unknown:1").unwrap_err().to_string();
        assert!(
            err.contains("\"example/unknown\"") && err.contains("/x/images.yaml"),
            "{err}"
        );
        // The logging walkthrough's fluentd image; Elasticsearch has no local program.
        assert_eq!(
            t.lookup("gcr.io/google-containers/fluentd-elasticsearch:v2.0.1")
                .unwrap()
                .command,
            ["keel-fluentd"]
        );
        assert!(
            t.lookup("docker.elastic.co/elasticsearch/elasticsearch-oss:6.1.1")
                .is_err()
        );
    }

    #[test]
    fn users_extend_and_replace_entries_and_bad_files_are_named() {
        let mut t = ImageTable::builtin("/x/images.yaml".into());
        t.extend_from_yaml(
            "images:\n- image: example/hello:2\n  command: [/bin/hello, -v]\n  env: {A: b}\n- image: keel/bookinfo-details\n  command: [my-details]\n",
        )
        .unwrap();
        assert_eq!(
            t.lookup("example/hello").unwrap().command,
            ["/bin/hello", "-v"]
        );
        assert_eq!(
            t.lookup("keel/bookinfo-details:0.1").unwrap().command,
            ["my-details"]
        );
        let err = t
            .extend_from_yaml("images:\n- image: a\n  command: []\n")
            .unwrap_err();
        assert!(err.contains("images[0].command"), "{err}");
        let err = t
            .extend_from_yaml("images:\n- image: a\n  cmd: [x]\n")
            .unwrap_err();
        assert!(err.contains("cmd"), "{err}");
    }
}
