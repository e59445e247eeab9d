//! Hints that ask the core to start bringing memory into its caches before it is read, so
//! that a miss overlaps the work before the read instead of stalling it. A hint is never a
//! read: it cannot fault and changes no result. Where the target has no such instruction
//! (or `safe_arch` does not offer it), the hints do nothing.

/// The cache line `value` starts in.
#[inline(always)]
pub(crate) fn value<T>(value: &T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    safe_arch::prefetch_t0(value);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = value;
}

/// Every cache line of `items` (the first of each item larger than a line).
#[inline]
pub(crate) fn slice<T>(items: &[T]) {
    const LINE: usize = 64;
    let step = (LINE / size_of::<T>().max(1)).max(1);
    for item in items.iter().step_by(step) {
        value(item);
    }
}
