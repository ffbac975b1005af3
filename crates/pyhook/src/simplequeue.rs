//! Which item each `_queue.SimpleQueue` get returned, so a replay hands out the same one.
//!
//! From 3.13, `put` hands its item straight to a thread already waiting in `get` (CPython's
//! parking lot), and the waiting threads may then return, and so record their events, in
//! another order than the hand-offs. A replay, where no thread waits inside the queue (each
//! waits for its turn in our code), would give each get the queue's head in that return
//! order: another item. So a recording numbers the puts of each queue and records, with
//! each get, the number of the put whose item it returned; a replay takes items from the
//! real queue in put order and keeps those that come out ahead of their get.

use crate::calls::RawCall;
use crate::gil::GilCell;
use crate::hooks::{hook, Hook, HookId};
use pyo3::ffi;
use std::collections::{BTreeMap, VecDeque};
use std::os::raw::c_void;

#[derive(Default)]
struct QueueOrder {
    /// Recording: the items put and not yet got (by address, held by the queue), with the
    /// number of their put.
    pending: VecDeque<(usize, u64)>,
    puts: u64,
    /// Replay: items taken from the real queue ahead of their get (strong references), by
    /// put number, and how many items have been taken.
    early: BTreeMap<u64, usize>,
    taken: u64,
}

/// By queue address. A queue's entry goes when the queue dies (a weak reference callback),
/// so a new queue at the same address starts afresh.
static QUEUES: GilCell<Option<rustc_hash::FxHashMap<usize, QueueOrder>>> = GilCell::new(None);

fn with_queues<R>(f: impl FnOnce(&mut rustc_hash::FxHashMap<usize, QueueOrder>) -> R) -> Option<R> {
    // SAFETY: every caller holds the GIL (hooks and a weak reference callback).
    QUEUES.with(unsafe { crate::session::py() }, |queues| f(queues.get_or_insert_with(Default::default)))
}

pub fn is_get(h: &Hook) -> bool {
    h.id == hook(HookId::simplequeue_get).id || h.id == hook(HookId::simplequeue_get_nowait).id
}

pub fn is_put(h: &Hook) -> bool {
    h.id == hook(HookId::simplequeue_put).id || h.id == hook(HookId::simplequeue_put_nowait).id
}

/// Recording: `item` was put into `queue`.
///
/// # Safety
/// GIL held; `queue` live.
pub unsafe fn note_put(queue: *mut ffi::PyObject, item: *mut ffi::PyObject) {
    // SAFETY: per the function's contract.
    let known = unsafe { watch(queue) };
    if !known {
        return;
    }
    with_queues(|queues| {
        let order = queues.entry(queue as usize).or_default();
        order.pending.push_back((item as usize, order.puts));
        order.puts += 1;
    });
}

/// Recording: the number of the put whose item a get of `queue` returned.
pub fn put_number(queue: *mut ffi::PyObject, item: *mut ffi::PyObject) -> Option<u64> {
    with_queues(|queues| {
        let order = queues.get_mut(&(queue as usize))?;
        let at = order.pending.iter().position(|&(address, _)| address == item as usize)?;
        order.pending.remove(at).map(|(_, number)| number)
    })
    .flatten()
}

/// Replay: the item of put `number`, taken from the real queue (in put order) by calling
/// the get itself, bare; items taken ahead of their own get are kept for it.
///
/// # Safety
/// GIL held; `call` is a get of a SimpleQueue and `original` its C function.
pub unsafe fn take_numbered(call: &RawCall, original: *mut c_void, number: u64) -> *mut ffi::PyObject {
    let queue = call.slf();
    // SAFETY: per the function's contract.
    if !unsafe { watch(queue) } {
        // SAFETY: as above.
        return unsafe { call.call_bare(original) };
    }
    loop {
        let kept = with_queues(|queues| queues.get_mut(&(queue as usize)).and_then(|o| o.early.remove(&number))).flatten();
        if let Some(item) = kept {
            return item as *mut ffi::PyObject;
        }
        let passed = with_queues(|queues| queues.get(&(queue as usize)).is_some_and(|o| o.taken > number)).unwrap_or(true);
        // SAFETY: as above. Every put before this get's turn has been made, so the queue
        // holds the item and the get does not wait.
        let item = unsafe { call.call_bare(original) };
        if item.is_null() || passed {
            // An error, or the item went elsewhere: what the queue gives is the answer.
            return item;
        }
        let mine = with_queues(|queues| {
            let order = queues.entry(queue as usize).or_default();
            let taken = order.taken;
            order.taken += 1;
            if taken == number {
                true
            } else {
                order.early.insert(taken, item as usize);
                false
            }
        })
        .unwrap_or(true);
        if mine {
            return item;
        }
    }
}

/// Makes sure `queue` has an entry that goes when the queue dies. False when that cannot be
/// arranged (the queue is then left to its plain behaviour).
///
/// # Safety
/// GIL held; `queue` live.
unsafe fn watch(queue: *mut ffi::PyObject) -> bool {
    if with_queues(|queues| queues.contains_key(&(queue as usize))) == Some(true) {
        return true;
    }
    // SAFETY: per the function's contract; SimpleQueue objects take weak references.
    if !unsafe { FORGET_QUEUE.watch(queue) } {
        return false;
    }
    with_queues(|queues| queues.insert(queue as usize, QueueOrder::default()));
    true
}

/// Called when a queue dies: its entry goes, and the items kept for its gets are released.
unsafe extern "C-unwind" fn forget_queue(address: *mut ffi::PyObject, _weakref: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: `address` is the int `DeathCallback::watch` bound the callback to; the kept
    // items are strong references.
    unsafe {
        let key = crate::deaths::address_of(address);
        let gone = with_queues(|queues| queues.remove(&key)).flatten();
        // Outside the cell: an item's deallocation may run code that reaches a hook.
        for item in gone.into_iter().flat_map(|order| order.early.into_values()) {
            ffi::Py_DECREF(item as *mut ffi::PyObject);
        }
        crate::codec::new_ref(ffi::Py_None())
    }
}

static FORGET_QUEUE: crate::deaths::DeathCallback = crate::deaths::DeathCallback::new(c"forget_queue", forget_queue);
