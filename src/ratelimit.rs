//! Rate limits: per user, per project, per user-and-project, and one cap on everything
//! sent to REDCap (REDCap bans the gateway's IP past ~600 calls a minute, locking out
//! every user). In-process with governor (GCRA) by default; shared across replicas in
//! Redis (GCRA in a Lua script, on Redis's own clock) when `redis_url` is set.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock, FakeRelativeClock};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{RateConfig, RateLimitConfig, WhenRedisFails};
use crate::telemetry::Metrics;

/// Why a call may not go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Retry after this long.
    Limited {
        limit: &'static str,
        retry_after: Duration,
    },
    /// Shared limits are unavailable and the config says to refuse.
    Unavailable,
}

type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Duration>> + Send + 'a>>;

/// One keyed limit.
pub trait Limit: Send + Sync {
    /// Ok, or the time until `cost` units would conform.
    fn check<'a>(&'a self, key: &'a str, cost: u32) -> CheckFuture<'a>;

    /// The same answer without waiting, where the limit can give one (in-process limits);
    /// saves a boxed future per check on the hot path.
    fn check_at_once(&self, _key: &str, _cost: u32) -> Option<Result<(), Duration>> {
        None
    }
}

/// One check: answered at once where the limit can, else awaited.
async fn check(l: &dyn Limit, key: &str, cost: u32) -> Result<(), Duration> {
    match l.check_at_once(key, cost) {
        Some(v) => v,
        None => l.check(key, cost).await,
    }
}

/// Keys of in-process limits: a 64-bit hash of the key text under a per-process random
/// seed (foldhash), so a check allocates nothing. Two keys share a bucket only on a
/// hash collision, which a client cannot aim for without the seed.
static KEY_SEED: std::sync::LazyLock<foldhash::quality::RandomState> =
    std::sync::LazyLock::new(foldhash::quality::RandomState::default);

fn key_hash(key: &str) -> u64 {
    use std::hash::BuildHasher;
    KEY_SEED.hash_one(key)
}

/// The keys are hashes already: the map uses them as they are.
#[derive(Default, Clone, Copy)]
pub struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in rather than panic.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap =
    governor::state::keyed::DashMapStateStore<u64, std::hash::BuildHasherDefault<PreHashed>>;

fn quota(r: &RateConfig, divide: u32) -> Quota {
    let limit = (r.limit / divide.max(1)).max(1);
    let burst = NonZeroU32::new((r.burst.unwrap_or(r.limit) / divide.max(1)).max(1))
        .unwrap_or(NonZeroU32::MIN);
    let period = r.per.0 / limit;
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// governor's keyed GCRA, on any clock (tests pass a fake one).
pub struct Local<C: Clock> {
    limiter: RateLimiter<u64, KeyMap, C, governor::middleware::NoOpMiddleware<C::Instant>>,
    clock: C,
    burst: u32,
}

impl<C: Clock + Clone + Send + Sync> Local<C>
where
    C::Instant: Send + Sync,
{
    pub fn new(r: &RateConfig, divide: u32, clock: C) -> Local<C> {
        let q = quota(r, divide);
        Local {
            limiter: RateLimiter::dashmap_with_clock_and_hasher(
                q,
                clock.clone(),
                Default::default(),
            ),
            clock,
            burst: q.burst_size().get(),
        }
    }

    pub fn check_now(&self, key: &str, cost: u32) -> Result<(), Duration> {
        let n = NonZeroU32::new(cost.clamp(1, self.burst)).unwrap_or(NonZeroU32::MIN);
        match self.limiter.check_key_n(&key_hash(key), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            Err(_) => Err(Duration::from_secs(1)),
        }
    }

    /// Drops the state of keys that are back to full capacity (bounded memory).
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
    }
}

impl<C: Clock + Clone + Send + Sync> Limit for Local<C>
where
    C::Instant: Send + Sync,
{
    fn check<'a>(&'a self, key: &'a str, cost: u32) -> CheckFuture<'a> {
        let r = self.check_now(key, cost);
        Box::pin(async move { r })
    }

    fn check_at_once(&self, key: &str, cost: u32) -> Option<Result<(), Duration>> {
        Some(self.check_now(key, cost))
    }
}

/// GCRA in Redis: a call conforms while its theoretical arrival time stays within the
/// burst window. Times come from Redis (TIME), so replicas' clocks do not matter.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * cost
if new_tat - now > window then
  return new_tat - now - window
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return 0
"#;

struct RedisLimit {
    name: &'static str,
    interval_us: u64,
    window_us: u64,
    burst: u32,
    shared: Arc<RedisShared>,
    /// Used when Redis fails and the config says to fall back.
    fallback: Local<DefaultClock>,
}

struct RedisShared {
    client: redis::Client,
    conn: tokio::sync::Mutex<(Option<redis::aio::ConnectionManager>, Option<Instant>)>,
    script: redis::Script,
    timeout: Duration,
    on_error: WhenRedisFails,
    metrics: Arc<Metrics>,
}

impl RedisShared {
    async fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        let mut g = self.conn.lock().await;
        if let Some(c) = &g.0 {
            return Some(c.clone());
        }
        // Reconnect at most once a second while Redis is away.
        if matches!(g.1, Some(t) if t.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        g.1 = Some(Instant::now());
        let made = tokio::time::timeout(
            self.timeout.max(Duration::from_millis(500)),
            redis::aio::ConnectionManager::new(self.client.clone()),
        )
        .await;
        match made {
            Ok(Ok(c)) => {
                g.0 = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot connect to Redis for rate limits");
                None
            }
            Err(_) => None,
        }
    }
}

impl Limit for RedisLimit {
    fn check<'a>(&'a self, key: &'a str, cost: u32) -> CheckFuture<'a> {
        Box::pin(async move {
            let cost = cost.clamp(1, self.burst);
            let s = &self.shared;
            let answer = match s.connection().await {
                None => None,
                Some(mut conn) => {
                    let mut inv = s.script.prepare_invoke();
                    inv.key(format!("redcap-gateway:{}:{key}", self.name))
                        .arg(self.interval_us)
                        .arg(self.window_us)
                        .arg(cost);
                    match tokio::time::timeout(s.timeout, inv.invoke_async::<u64>(&mut conn)).await
                    {
                        Ok(Ok(wait_us)) => Some(wait_us),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "Redis rate-limit call failed");
                            None
                        }
                        Err(_) => {
                            tracing::warn!("Redis rate-limit call timed out");
                            None
                        }
                    }
                }
            };
            match answer {
                Some(0) => Ok(()),
                Some(wait_us) => Err(Duration::from_micros(wait_us)),
                None => {
                    s.metrics.redis_errors.inc();
                    match s.on_error {
                        WhenRedisFails::Local => self.fallback.check_now(key, cost),
                        // Signalled with a zero wait: the layer turns it into 503.
                        WhenRedisFails::Reject => Err(Duration::ZERO),
                    }
                }
            }
        })
    }
}

/// Calls in flight per user.
type InFlight = Arc<Mutex<HashMap<String, usize>>>;

/// A held concurrency slot; released when dropped.
#[derive(Debug)]
pub struct Permit {
    _upstream: Option<OwnedSemaphorePermit>,
    user: Option<(InFlight, String)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((map, user)) = self.user.take() {
            if let Ok(mut m) = map.lock() {
                if let Some(n) = m.get_mut(&user) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&user);
                    }
                }
            }
        }
    }
}

/// All limits, built from the config.
pub struct RateLimits {
    user: Option<Box<dyn Limit>>,
    project: Option<Box<dyn Limit>>,
    user_project: Option<Box<dyn Limit>>,
    upstream: Option<Box<dyn Limit>>,
    queue: Duration,
    pub mutating_cost: u32,
    user_concurrency: Option<(usize, InFlight)>,
    upstream_concurrency: Option<Arc<Semaphore>>,
    metrics: Arc<Metrics>,
}

impl RateLimits {
    pub async fn new(c: &RateLimitConfig, metrics: Arc<Metrics>) -> Result<RateLimits, String> {
        let shared = match &c.redis_url {
            Some(url) => Some(Arc::new(RedisShared {
                client: redis::Client::open(url.as_str()).map_err(|e| format!("redis_url: {e}"))?,
                conn: tokio::sync::Mutex::new((None, None)),
                script: redis::Script::new(GCRA_LUA),
                timeout: c.redis_timeout.0,
                on_error: c.on_redis_error,
                metrics: metrics.clone(),
            })),
            None => None,
        };
        let make = |name: &'static str, r: &Option<RateConfig>| -> Option<Box<dyn Limit>> {
            let r = r.as_ref()?;
            Some(match &shared {
                None => Box::new(Local::new(r, 1, DefaultClock::default())),
                Some(s) => {
                    let q = quota(r, 1);
                    let interval = r.per.0.as_micros() as u64 / u64::from(r.limit.max(1));
                    Box::new(RedisLimit {
                        name,
                        interval_us: interval.max(1),
                        window_us: interval.max(1) * u64::from(q.burst_size().get()),
                        burst: q.burst_size().get(),
                        shared: s.clone(),
                        fallback: Local::new(r, c.replicas, DefaultClock::default()),
                    })
                }
            })
        };
        if let Some(s) = &shared {
            if s.connection().await.is_none() {
                tracing::warn!(
                    "Redis is not reachable yet; rate limits follow on_redis_error until it is"
                );
            }
        }
        Ok(RateLimits {
            user: make("user", &c.per_user),
            project: make("project", &c.per_project),
            user_project: make("user_project", &c.per_user_project),
            upstream: make("upstream", &c.upstream),
            queue: c.upstream_queue.0,
            mutating_cost: c.mutating_cost,
            user_concurrency: c
                .per_user_concurrency
                .map(|n| (n, Arc::new(Mutex::new(HashMap::new())))),
            upstream_concurrency: c.upstream_concurrency.map(|n| Arc::new(Semaphore::new(n))),
            metrics,
        })
    }

    /// A limiter set on a fake clock, for tests of the arithmetic.
    pub fn local_with_clock(r: &RateConfig, clock: FakeRelativeClock) -> Local<FakeRelativeClock> {
        Local::new(r, 1, clock)
    }

    fn refuse(&self, limit: &'static str, wait: Duration) -> Refusal {
        if wait.is_zero() {
            return Refusal::Unavailable;
        }
        self.metrics.rate_limited.with_label_values(&[limit]).inc();
        Refusal::Limited {
            limit,
            retry_after: wait,
        }
    }

    /// Charges `cost` to the user's own rate only (`per_user`): for the gateway's own
    /// endpoints, which send nothing to REDCap.
    pub async fn charge_user(&self, user: &str, cost: u32) -> Result<(), Refusal> {
        match &self.user {
            Some(l) => check(l.as_ref(), user, cost)
                .await
                .map_err(|w| self.refuse("user", w)),
            None => Ok(()),
        }
    }

    /// Checks every limit for a call; on success the returned permit must be held until
    /// the call is done.
    pub async fn admit(&self, user: &str, project: &str, cost: u32) -> Result<Permit, Refusal> {
        let up_key = match &self.user_project {
            Some(_) => format!("{user}\u{0}{project}"),
            None => String::new(),
        };
        for (name, limit, key) in [
            ("user", &self.user, user),
            ("project", &self.project, project),
            ("user_project", &self.user_project, up_key.as_str()),
        ] {
            if let Some(l) = limit {
                check(l.as_ref(), key, cost)
                    .await
                    .map_err(|w| self.refuse(name, w))?;
            }
        }
        let mut permit = Permit {
            _upstream: None,
            user: None,
        };
        if let Some((max, map)) = &self.user_concurrency {
            let mut m = map.lock().map_err(|_| Refusal::Unavailable)?;
            let n = m.entry(user.to_string()).or_insert(0);
            if *n >= *max {
                drop(m);
                return Err(self.refuse("user_concurrency", Duration::from_secs(1)));
            }
            *n += 1;
            permit.user = Some((map.clone(), user.to_string()));
        }
        // The upstream cap: wait briefly for room (queue), never let a burst through.
        let deadline = Instant::now() + self.queue;
        if let Some(l) = &self.upstream {
            loop {
                match check(l.as_ref(), "all", cost).await {
                    Ok(()) => break,
                    Err(w) if w.is_zero() => return Err(Refusal::Unavailable),
                    Err(w) if Instant::now() + w <= deadline => tokio::time::sleep(w).await,
                    Err(w) => return Err(self.refuse("upstream", w)),
                }
            }
        }
        if let Some(sem) = &self.upstream_concurrency {
            let wait = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, sem.clone().acquire_owned()).await {
                Ok(Ok(p)) => permit._upstream = Some(p),
                _ => return Err(self.refuse("upstream_concurrency", Duration::from_secs(1))),
            }
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn rate(limit: u32, per: Duration, burst: Option<u32>) -> RateConfig {
        RateConfig {
            limit,
            per: Dur(per),
            burst,
        }
    }

    #[test]
    fn gcra_on_a_fake_clock() {
        let clock = FakeRelativeClock::default();
        let l = RateLimits::local_with_clock(
            &rate(60, Duration::from_secs(60), Some(5)),
            clock.clone(),
        );
        for _ in 0..5 {
            assert!(l.check_now("u", 1).is_ok());
        }
        let wait = l.check_now("u", 1).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        clock.advance(Duration::from_secs(1));
        assert!(l.check_now("u", 1).is_ok());
        assert!(l.check_now("v", 1).is_ok(), "keys are independent");
        // A costly call takes more room.
        clock.advance(Duration::from_secs(10));
        assert!(l.check_now("u", 5).is_ok());
        assert!(l.check_now("u", 1).is_err());
    }
}
