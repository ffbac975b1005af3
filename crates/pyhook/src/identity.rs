//! Identity hashes that do not depend on addresses.
//!
//! `hash(obj)` of an object whose class does not define `__hash__` is derived from its
//! address, and addresses differ from run to run (address-space randomisation, and our own
//! allocations, which differ between recording and replay). A set of such objects (the
//! `done` set of `asyncio.wait`, `concurrent.futures.wait`, a `WeakSet`, threads in a set)
//! is then iterated in another order at replay, and a program that prints, joins or
//! cancels in that order takes another path.
//!
//! While a session runs, the default hash of every class that inherits it is replaced: an
//! object's hash is assigned when it is first hashed, from a per-thread, per-class counter
//! and the class's name, and kept in a table keyed by address until the object dies. The
//! same program hashes the same objects in the same order on each thread, so the values,
//! and therefore set order, are the same at replay. Entries leave the table through a weak
//! reference whose callback runs when the object dies, before its address can be reused.
//! Objects that cannot be weakly referenced (`object()`, classes with `__slots__` and no
//! `__weakref__`) keep the address hash. So do the objects that are keys of a dict or a set
//! when the session starts: they were hashed already, and a hash must not change.
//!
//! Cost: the first hash of an object creates a weak reference and two table entries (kept
//! while it lives); later hashes are a lookup in a small direct-mapped cache,
//! or in the table, instead of a shift.

use crate::session::THREAD_INDEX;
use pyo3::ffi;
use rustc_hash::FxHashMap;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::os::raw::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

/// The interpreter's own default hash (`object.__hash__`, from the address).
static ADDRESS_HASH: OnceLock<ffi::hashfunc> = OnceLock::new();
/// The callback of our weak references (a builtin function made once).
static FORGET: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

/// Slots of the direct-mapped cache in front of the table.
const RECENT: usize = 4096;

struct Table {
    /// Recently used entries, by address bits: a hit costs a load and a compare.
    recent: Box<[(usize, ffi::Py_hash_t)]>,
    /// The hash assigned to the object at an address.
    by_address: FxHashMap<usize, ffi::Py_hash_t>,
    /// The object (address) each of our weak references watches.
    by_weakref: FxHashMap<usize, usize>,
    /// Weak references whose object died: released at the next insertion, not inside
    /// their own callback.
    dead: Vec<*mut ffi::PyObject>,
}

/// The table, protected by the GIL (every hash and every weakref callback runs with it).
struct GilTable(UnsafeCell<Option<Table>>);
// SAFETY: only touched from `identity_hash` and `forget`, which CPython calls with the GIL
// held, so one thread at a time; neither calls back into Python while borrowing it.
unsafe impl Sync for GilTable {}
static TABLE: GilTable = GilTable(UnsafeCell::new(None));

thread_local! {
    /// Per-class counters of this thread: the class's name digest and the next serial.
    static COUNTERS: RefCell<FxHashMap<usize, (u64, u64)>> = RefCell::new(FxHashMap::default());
}

/// The callback of our weak references (METH_O: `self` unused, the weak reference).
unsafe extern "C" fn forget(_slf: *mut ffi::PyObject, weakref: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the GIL held (see `GilTable`).
    unsafe {
        if let Some(table) = (*TABLE.0.get()).as_mut() {
            if let Some(address) = table.by_weakref.remove(&(weakref as usize)) {
                table.by_address.remove(&address);
                let slot = &mut table.recent[recent_slot(address)];
                if slot.0 == address {
                    *slot = (0, 0);
                }
                table.dead.push(weakref);
            }
        }
        ffi::Py_NewRef(ffi::Py_None())
    }
}

struct CallbackDef(UnsafeCell<ffi::PyMethodDef>);
// SAFETY: never written after its static initialisation; CPython only reads it.
unsafe impl Sync for CallbackDef {}
static FORGET_DEF: CallbackDef = CallbackDef(UnsafeCell::new(ffi::PyMethodDef {
    ml_name: c"retrace_forget_hash".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer { PyCFunction: forget },
    ml_flags: ffi::METH_O,
    ml_doc: std::ptr::null(),
}));

fn recent_slot(address: usize) -> usize {
    (address >> 4) & (RECENT - 1)
}

/// The class's name, digested: keeps serials of different classes apart in a set.
fn class_digest(tp: *mut ffi::PyTypeObject) -> u64 {
    // SAFETY: a live type object's tp_name is a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr((*tp).tp_name) };
    xxhash_rust::xxh3::xxh3_64(name.to_bytes())
}

/// The replacement of `object.__hash__`.
unsafe extern "C" fn identity_hash(obj: *mut ffi::PyObject) -> ffi::Py_hash_t {
    // SAFETY: CPython calls tp_hash with the GIL held and a live object.
    unsafe {
        let Some(&address_hash) = ADDRESS_HASH.get() else { return -1 };
        let Some(table) = (*TABLE.0.get()).as_mut() else { return address_hash(obj) };
        let slot = recent_slot(obj as usize);
        let (cached, cached_hash) = table.recent[slot];
        if cached == obj as usize {
            return cached_hash;
        }
        if let Some(&hash) = table.by_address.get(&(obj as usize)) {
            table.recent[slot] = (obj as usize, hash);
            return hash;
        }
        let tp = ffi::Py_TYPE(obj);
        // No weak reference can watch such an object's death (`object()`, `__slots__`
        // without `__weakref__`): it keeps the address hash, without trying (and failing
        // with an exception) at every hash.
        if (*tp).tp_weaklistoffset == 0 {
            return address_hash(obj);
        }
        let thread = u64::from(THREAD_INDEX.with(Cell::get));
        let serial = COUNTERS.with(|c| {
            let mut counters = c.borrow_mut();
            let (digest, next) = counters.entry(tp as usize).or_insert_with(|| (class_digest(tp), 0));
            *next += 1;
            digest.wrapping_add(thread.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(*next)
        });
        // -1 means "error" to CPython.
        let hash = match serial as ffi::Py_hash_t {
            -1 => -2,
            h => h,
        };
        if remember(table, obj, hash) {
            hash
        } else {
            address_hash(obj)
        }
    }
}

/// Keeps `hash` for `obj` until it dies. False when `obj` cannot be weakly referenced.
///
/// # Safety
/// GIL held; `obj` live.
unsafe fn remember(table: &mut Table, obj: *mut ffi::PyObject, hash: ffi::Py_hash_t) -> bool {
    // SAFETY: per the function's contract. Creating a weak reference runs no Python code
    // and hashes nothing, so the table is not reached again meanwhile.
    unsafe {
        for weakref in table.dead.drain(..) {
            ffi::Py_DECREF(weakref);
        }
        let weakref = ffi::PyWeakref_NewRef(obj, FORGET.load(Ordering::Relaxed));
        if weakref.is_null() {
            ffi::PyErr_Clear();
            return false;
        }
        table.by_address.insert(obj as usize, hash);
        table.recent[recent_slot(obj as usize)] = (obj as usize, hash);
        table.by_weakref.insert(weakref as usize, obj as usize);
        true
    }
}

/// Keeps the address hash of every key of a live dict or set whose class hashes by
/// address: those were hashed before the session, and must keep their hash.
///
/// # Safety
/// GIL held, before the slots are replaced.
unsafe fn keep_hashes_in_use(table: &mut Table, address_hash: ffi::hashfunc) {
    // SAFETY: per the function's contract; dict and set entries are borrowed while the
    // containers are alive (the list of all objects holds them).
    unsafe {
        let gc = ffi::PyImport_ImportModule(c"gc".as_ptr());
        let objects = if gc.is_null() { gc } else { ffi::PyObject_CallMethod(gc, c"get_objects".as_ptr(), std::ptr::null()) };
        ffi::Py_XDECREF(gc);
        if objects.is_null() {
            ffi::PyErr_Clear();
            return;
        }
        let mut keep = |key: *mut ffi::PyObject| {
            let hashes_by_address = (*ffi::Py_TYPE(key)).tp_hash.is_some_and(|h| h as usize == address_hash as usize);
            if hashes_by_address && !table.by_address.contains_key(&(key as usize)) {
                remember(table, key, address_hash(key));
            }
        };
        for i in 0..ffi::PyList_Size(objects) {
            let container = ffi::PyList_GetItem(objects, i);
            if ffi::PyDict_Check(container) != 0 {
                let (mut pos, mut key, mut value) = (0, std::ptr::null_mut(), std::ptr::null_mut());
                while ffi::PyDict_Next(container, &mut pos, &mut key, &mut value) != 0 {
                    keep(key);
                }
            } else if ffi::PyAnySet_Check(container) != 0 {
                let iter = ffi::PyObject_GetIter(container);
                if iter.is_null() {
                    ffi::PyErr_Clear();
                    continue;
                }
                loop {
                    let key = ffi::PyIter_Next(iter);
                    if key.is_null() {
                        break;
                    }
                    keep(key);
                    ffi::Py_DECREF(key);
                }
                ffi::Py_DECREF(iter);
                ffi::PyErr_Clear();
            }
        }
        ffi::Py_DECREF(objects);
    }
}

/// Replaces the address hash in `object` and in every class that inherited it, including
/// `object.__hash__` itself; classes made later inherit ours. Both the recording and the
/// replay do it, before the program runs.
///
/// # Safety
/// The GIL must be held.
pub unsafe fn install() -> Result<(), String> {
    // SAFETY: per the function's contract; the type slots we write are the ones CPython
    // reads for hashing, and we write them while no other thread runs Python code.
    unsafe {
        let object = std::ptr::addr_of_mut!(ffi::PyBaseObject_Type);
        let Some(original) = (*object).tp_hash else {
            return Err("object has no hash".into());
        };
        if ADDRESS_HASH.set(original).is_err() {
            return Ok(());
        }
        let forget = ffi::PyCFunction_NewEx(FORGET_DEF.0.get(), std::ptr::null_mut(), std::ptr::null_mut());
        if forget.is_null() {
            ffi::PyErr_Clear();
            return Err("cannot create the weak reference callback".into());
        }
        FORGET.store(forget, Ordering::Relaxed);
        let mut table = Table { recent: vec![(0, 0); RECENT].into_boxed_slice(), by_address: FxHashMap::default(), by_weakref: FxHashMap::default(), dead: Vec::new() };
        keep_hashes_in_use(&mut table, original);
        *TABLE.0.get() = Some(table);
        let ours: ffi::hashfunc = identity_hash;
        replace_in_subtree(object, original, ours);
        // The slot wrapper `object.__hash__`: what `object.__hash__(x)` and `super().__hash__()`
        // call, and (from 3.12 on) where a new class finds its tp_hash.
        let wrapper = ffi::PyObject_GetAttrString(object.cast(), c"__hash__".as_ptr());
        if wrapper.is_null() {
            ffi::PyErr_Clear();
        } else {
            if ffi::Py_TYPE(wrapper) == std::ptr::addr_of_mut!(ffi::PyWrapperDescr_Type) {
                let descr = wrapper.cast::<ffi::PyWrapperDescrObject>();
                if (*descr).d_wrapped == original as *mut c_void {
                    (*descr).d_wrapped = ours as *mut c_void;
                }
            }
            ffi::Py_DECREF(wrapper);
        }
        ffi::PyType_Modified(object);
        Ok(())
    }
}

/// Sets `ours` as tp_hash of `tp` and of every subclass whose tp_hash is `original`.
///
/// # Safety
/// GIL held; `tp` a live type.
unsafe fn replace_in_subtree(tp: *mut ffi::PyTypeObject, original: ffi::hashfunc, ours: ffi::hashfunc) {
    // SAFETY: per the function's contract.
    unsafe {
        if (*tp).tp_hash.is_some_and(|h| h as usize == original as usize) {
            (*tp).tp_hash = Some(ours);
        }
        let subclasses = ffi::PyObject_CallMethod(tp.cast(), c"__subclasses__".as_ptr(), std::ptr::null());
        if subclasses.is_null() {
            ffi::PyErr_Clear();
            return;
        }
        let n = ffi::PyList_Size(subclasses);
        for i in 0..n {
            let sub = ffi::PyList_GetItem(subclasses, i);
            if !sub.is_null() && ffi::PyType_Check(sub) != 0 {
                replace_in_subtree(sub.cast(), original, ours);
            }
        }
        ffi::Py_DECREF(subclasses);
    }
}
