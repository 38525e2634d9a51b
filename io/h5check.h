/* h5check.h — HDF5's error stack as a message, and a look at an object
 * header's bytes before HDF5 decodes them. Internal to io/.
 *
 * HDF5 1.10 decodes the attribute messages of an object header without
 * bounds checks, and reads a variable-length string out of a global heap
 * collection it trusts: on a damaged file it crashes, reads wild memory or
 * loops. Before io/ asks HDF5 for an attribute of an object of an untrusted
 * file it calls strata_hdf5_attrs_problem (or the _ok forms): the header is
 * read with plain reads (versions 1 and 2, continuation chunks followed),
 * every attribute message is checked as later HDF5 releases check it, and
 * the heap object a string points at is walked as HDF5 will walk it.
 * Attributes in dense storage are HDF5's own to check (those blocks carry
 * checksums).
 */
#ifndef STRATA_IO_H5CHECK_H
#define STRATA_IO_H5CHECK_H

#include <hdf5.h>
#include <stddef.h>

/* NULL when HDF5 may decode the attribute messages of obj's header and,
 * with name, read the variable-length string attribute name; else the
 * problem ("an attribute name is damaged", ...), a static string. */
const char *strata_hdf5_attrs_problem(hid_t obj, const char *name);
/* 1 when every attribute message of obj is sound; on 0, why gets the problem. */
int strata_hdf5_attrs_ok(hid_t obj, char *why, size_t why_len);
/* 1 when HDF5 can safely read the variable-length string attribute name of
 * obj (its character type, heap reference and heap collection intact). */
int strata_hdf5_vlen_attr_ok(hid_t obj, const char *name, char *why, size_t why_len);
/* The innermost message of this thread's HDF5 error stack, made one line
 * (at most 255 bytes, in buf; "" if none), and clears the stack. Call it
 * right after the failing HDF5 call; the next HDF5 call clears the stack. */
const char *strata_hdf5_reason(char buf[256]);

#endif
