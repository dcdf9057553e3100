//! The cache's deadlines on tokio's paused clock (the wall clock stays within its tolerance, so the
//! monotonic view decides, to the nanosecond) and its striped header copies.

use super::*;

fn cache(skew: Duration) -> TokenCache {
    TokenCache::new(CachePolicy::single(skew, Clock::new()))
}

fn token(expires_in: Duration) -> TokenSet {
    TokenSet::new("access-token-0123456789").with_expires_in(expires_in)
}

/// Moves tokio's paused clock to exactly `at`.
async fn advance_to(at: Instant) {
    tokio::time::advance(at - Instant::now()).await;
}

fn kind(read: Read) -> (&'static str, Option<u64>) {
    match read {
        Read::Fresh(_, generation) => ("fresh", Some(generation)),
        Read::Stale(_, generation) => ("stale", Some(generation)),
        Read::Missing => ("missing", None),
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_is_fresh_then_stale_from_its_refresh_point_then_missing_from_its_expiry() {
    let cache = cache(Duration::from_secs(10));
    assert_eq!(kind(cache.read()), ("missing", None));
    assert!(!cache.load().usable() && !cache.load().fresh());

    let current = cache.publish(token(Duration::from_secs(100))).unwrap();
    assert_eq!(current.generation, 1);
    assert!(current.refresh_at < current.expires_at);
    assert_eq!(kind(cache.read()), ("fresh", Some(1)));
    assert!(current.usable() && current.fresh());

    // One nanosecond before the refresh point: still fresh.
    advance_to(current.refresh_at - Duration::from_nanos(1)).await;
    assert_eq!(kind(cache.read()), ("fresh", Some(1)));
    assert!(current.fresh());
    // At the refresh point exactly: stale, still usable.
    advance_to(current.refresh_at).await;
    assert_eq!(kind(cache.read()), ("stale", Some(1)));
    assert!(!current.fresh() && current.usable());
    // One nanosecond before expiry: still sent.
    advance_to(current.expires_at - Duration::from_nanos(1)).await;
    assert_eq!(kind(cache.read()), ("stale", Some(1)));
    assert!(current.usable());
    // At expiry exactly: never sent again.
    advance_to(current.expires_at).await;
    assert_eq!(kind(cache.read()), ("missing", None));
    assert!(!current.usable() && !current.fresh());
}

#[tokio::test(start_paused = true)]
async fn the_refresh_point_is_the_skew_before_expiry_or_half_a_short_life() {
    let cache = cache(Duration::from_secs(60));
    let long = cache.publish(token(Duration::from_secs(3_600))).unwrap();
    let skew = long.expires_at - long.refresh_at;
    assert_eq!(skew, Duration::from_secs(60));
    let short = cache.publish(token(Duration::from_secs(30))).unwrap();
    let skew = short.expires_at - short.refresh_at;
    // Half of what was left when published: 15 s give or take half the real time that passed
    // between the answer and the publish (the wall clock moves while tokio's is paused, so the
    // drift may go either way; seen at 15.000003 s). Far from the 60 s skew and the 30 s life.
    assert!(
        skew > Duration::from_secs(10) && skew < Duration::from_secs(20),
        "{skew:?}"
    );
    assert_eq!(short.generation, 2);
}

#[tokio::test(start_paused = true)]
async fn a_token_without_an_expiry_stays_fresh_for_years() {
    let cache = cache(Duration::from_secs(60));
    cache
        .publish(TokenSet::new("access-token-0123456789"))
        .unwrap();
    tokio::time::advance(Duration::from_secs(2 * 366 * 24 * 60 * 60)).await;
    assert_eq!(kind(cache.read()), ("fresh", Some(1)));
}

#[tokio::test(start_paused = true)]
async fn clearing_forgets_the_token_and_moves_the_generation_on() {
    let cache = cache(Duration::from_secs(10));
    cache.publish(token(Duration::from_secs(100))).unwrap();
    cache.clear();
    assert_eq!(kind(cache.read()), ("missing", None));
    let cleared = cache.load();
    assert_eq!(cleared.generation, 2);
    assert!(cleared.tokens.is_none() && cleared.header().is_none());
    assert!(!cleared.usable());
    assert_eq!(
        cache
            .publish(token(Duration::from_secs(100)))
            .unwrap()
            .generation,
        3
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_are_adoptable_only_with_more_than_a_moment_left() {
    let cache = cache(Duration::from_secs(10));
    assert!(cache.adoptable(&TokenSet::new("no-expiry-0123456789")));
    assert!(cache.adoptable(&token(Duration::from_secs(1))));
    assert!(!cache.adoptable(&token(Duration::from_millis(50))));
    assert!(!cache.adoptable(&token(Duration::ZERO)));
}

#[test]
fn each_stripe_reads_its_own_copy_of_the_header() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let striped = cache(Duration::from_secs(10));
    let current = striped.publish(token(Duration::from_secs(100))).unwrap();
    let Some(headers) = &current.headers else {
        panic!("published without a header")
    };
    let copies: Vec<HeaderValue> = (0..STRIPES).map(|s| headers.get(s)).collect();
    for (s, copy) in copies.iter().enumerate() {
        assert_eq!(copy.as_bytes(), b"Bearer access-token-0123456789");
        assert!(copy.is_sensitive());
        for other in &copies[..s] {
            assert_ne!(
                other.as_bytes().as_ptr(),
                copy.as_bytes().as_ptr(),
                "stripe {s}"
            );
        }
    }
    // A stripe index past the number of copies wraps around.
    assert_eq!(
        headers.get(STRIPES + 1).as_bytes().as_ptr(),
        copies[1].as_bytes().as_ptr()
    );

    // One grant of many keeps one copy.
    let one = TokenCache::new(CachePolicy::grants(Duration::from_secs(10), Clock::new()));
    let current = one.publish(token(Duration::from_secs(100))).unwrap();
    let header = current.header().unwrap();
    assert_eq!(header.as_bytes(), b"Bearer access-token-0123456789");
    assert!(header.is_sensitive());
}
