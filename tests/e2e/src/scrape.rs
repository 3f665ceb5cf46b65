//! A Prometheus-style scraper for tests: GETs a controller's `/metrics` at a fixed interval in
//! a background task and keeps every exposition with the moment it was taken, so a test can
//! assert how the figures moved during a run (not only where they ended).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::project::{http_get, sample};

/// One exposition and when it was taken.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub at: Instant,
    pub text: String,
}

impl Scrape {
    /// The sample of `metric` with exactly `labels` ([`sample`]'s form).
    pub fn value(&self, metric: &str, labels: &str) -> Option<f64> {
        sample(&self.text, metric, labels)
    }

    /// Every sample of `metric` (the name exactly, not its `_bucket`/`_count` suffixes) as
    /// (labels, value), in the exposition's order.
    pub fn samples(&self, metric: &str) -> Vec<(String, f64)> {
        self.text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(metric)?;
                let (labels, value) = match rest.strip_prefix('{') {
                    Some(r) => r.split_once("} ")?,
                    None => ("", rest.strip_prefix(' ')?),
                };
                Some((labels.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }
}

/// A background scrape of one URL; [`Scraper::stop`] ends it and hands over the timeline.
pub struct Scraper {
    scrapes: Arc<Mutex<Vec<Scrape>>>,
    failed: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

/// Scrapes `url` now and then every `every` until stopped. A scrape that gets no answer is
/// counted (see [`Timeline::failed`]), not kept.
pub fn start(url: String, every: Duration) -> Scraper {
    let scrapes = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(0));
    let (out, fails) = (scrapes.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match http_get(&url).await {
                Some(text) => out.lock().unwrap().push(Scrape {
                    at: Instant::now(),
                    text,
                }),
                None => *fails.lock().unwrap() += 1,
            }
        }
    });
    Scraper {
        scrapes,
        failed,
        task,
        started: Instant::now(),
    }
}

impl Scraper {
    /// Waits (up to `timeout`, failing the test after it) until a scrape satisfies `done`, so
    /// a test can stop once the figures it expects have shown.
    pub async fn until(&self, timeout: Duration, what: &str, done: impl Fn(&Scrape) -> bool) {
        let start = Instant::now();
        while !self.scrapes.lock().unwrap().iter().any(&done) {
            assert!(
                start.elapsed() < timeout,
                "no scrape showed {what} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops and returns everything scraped.
    pub fn stop(self) -> Timeline {
        self.task.abort();
        let scrapes = std::mem::take(&mut *self.scrapes.lock().unwrap());
        let failed = *self.failed.lock().unwrap();
        Timeline {
            started: self.started,
            scrapes,
            failed,
        }
    }
}

/// Every exposition of a scrape run, oldest first.
#[derive(Debug)]
pub struct Timeline {
    pub started: Instant,
    pub scrapes: Vec<Scrape>,
    /// Scrapes that got no answer (or not 200).
    pub failed: usize,
}

impl Timeline {
    /// The value of one series at each scrape (None where it was absent).
    pub fn series(&self, metric: &str, labels: &str) -> Vec<Option<f64>> {
        self.scrapes
            .iter()
            .map(|s| s.value(metric, labels))
            .collect()
    }

    /// The series' values with consecutive repeats folded, each with the offset (from the
    /// scraper's start) of the scrape where it first showed: how the figure moved.
    pub fn changes(&self, metric: &str, labels: &str) -> Vec<(Duration, Option<f64>)> {
        fold(
            self.scrapes
                .iter()
                .map(|s| (s.at - self.started, s.value(metric, labels))),
        )
    }

    /// For a gauge family with one label (e.g. `phase`): at each scrape, the label values
    /// whose gauge is non-zero, with their values (`"Upgrading=1"`), folded like
    /// [`Timeline::changes`].
    pub fn nonzero(&self, metric: &str) -> Vec<(Duration, Vec<String>)> {
        fold(self.scrapes.iter().map(|s| {
            let set: Vec<String> = s
                .samples(metric)
                .into_iter()
                .filter(|(_, v)| *v != 0.0)
                .map(|(labels, v)| {
                    let value = labels
                        .split_once('=')
                        .map_or(labels.as_str(), |(_, v)| v)
                        .trim_matches('"');
                    format!("{value}={v}")
                })
                .collect();
            (s.at - self.started, set)
        }))
    }

    pub fn first(&self) -> &Scrape {
        self.scrapes.first().expect("no scrape answered")
    }

    pub fn last(&self) -> &Scrape {
        self.scrapes.last().expect("no scrape answered")
    }
}

/// Folds consecutive equal values, keeping when each first showed.
fn fold<T: PartialEq>(items: impl Iterator<Item = (Duration, T)>) -> Vec<(Duration, T)> {
    let mut out: Vec<(Duration, T)> = Vec::new();
    for (at, v) in items {
        if out.last().is_none_or(|(_, last)| *last != v) {
            out.push((at, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(at: Instant, text: &str) -> Scrape {
        Scrape {
            at,
            text: text.into(),
        }
    }

    #[test]
    fn a_timeline_folds_repeats_and_reads_label_families() {
        let t0 = Instant::now();
        let a = "m_count 1\ng{phase=\"A\"} 1\ng{phase=\"B\"} 0\n";
        let b = "m_count 1\ng{phase=\"A\"} 0\ng{phase=\"B\"} 1\n";
        let c = "m_count 4\ng{phase=\"A\"} 0\ng{phase=\"B\"} 1\n";
        let t = Timeline {
            started: t0,
            scrapes: vec![
                scrape(t0, a),
                scrape(t0 + Duration::from_secs(1), b),
                scrape(t0 + Duration::from_secs(2), c),
            ],
            failed: 0,
        };
        assert_eq!(
            t.changes("m_count", ""),
            vec![
                (Duration::ZERO, Some(1.0)),
                (Duration::from_secs(2), Some(4.0))
            ]
        );
        assert_eq!(
            t.nonzero("g"),
            vec![
                (Duration::ZERO, vec!["A=1".to_string()]),
                (Duration::from_secs(1), vec!["B=1".to_string()])
            ]
        );
        // A name is matched whole: `m` is not `m_count`.
        assert!(t.last().samples("m").is_empty());
        assert_eq!(t.series("nope", ""), vec![None, None, None]);
    }
}
