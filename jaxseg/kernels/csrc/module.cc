// Python module jaxseg.kernels._ffi_cpu: hands the XLA FFI handlers to Python as PyCapsules, which
// jaxseg/kernels/ffi.py registers with jax.ffi.register_ffi_target(..., platform="cpu").
// Plain CPython API, so the build needs nothing beyond a C++17 compiler and jax's FFI headers.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "xla/ffi/api/c_api.h"

extern "C" {
XLA_FFI_Error* JaxsegRoiAlignForward(XLA_FFI_CallFrame*);
XLA_FFI_Error* JaxsegRoiAlignBackward(XLA_FFI_CallFrame*);
XLA_FFI_Error* JaxsegNms(XLA_FFI_CallFrame*);
XLA_FFI_Error* JaxsegPasteMasksValues(XLA_FFI_CallFrame*);
XLA_FFI_Error* JaxsegPasteMasksBinary(XLA_FFI_CallFrame*);
XLA_FFI_Error* JaxsegSwapAlign2NatForward(XLA_FFI_CallFrame*);
XLA_FFI_Error* JaxsegSwapAlign2NatBackward(XLA_FFI_CallFrame*);
}

namespace {

struct Target {
  const char* name;
  void* handler;
};

const Target kTargets[] = {
    {"jaxseg_roi_align_fwd", reinterpret_cast<void*>(JaxsegRoiAlignForward)},
    {"jaxseg_roi_align_bwd", reinterpret_cast<void*>(JaxsegRoiAlignBackward)},
    {"jaxseg_nms", reinterpret_cast<void*>(JaxsegNms)},
    {"jaxseg_paste_masks_values", reinterpret_cast<void*>(JaxsegPasteMasksValues)},
    {"jaxseg_paste_masks_binary", reinterpret_cast<void*>(JaxsegPasteMasksBinary)},
    {"jaxseg_swap_align2nat_fwd", reinterpret_cast<void*>(JaxsegSwapAlign2NatForward)},
    {"jaxseg_swap_align2nat_bwd", reinterpret_cast<void*>(JaxsegSwapAlign2NatBackward)},
};

// registrations() -> {target name: PyCapsule of the handler}
PyObject* Registrations(PyObject*, PyObject*) {
  PyObject* dict = PyDict_New();
  if (dict == nullptr) return nullptr;
  for (const Target& t : kTargets) {
    PyObject* capsule = PyCapsule_New(t.handler, nullptr, nullptr);
    if (capsule == nullptr || PyDict_SetItemString(dict, t.name, capsule) != 0) {
      Py_XDECREF(capsule);
      Py_DECREF(dict);
      return nullptr;
    }
    Py_DECREF(capsule);
  }
  return dict;
}

PyMethodDef kMethods[] = {
    {"registrations", Registrations, METH_NOARGS, "Target name -> PyCapsule of its XLA FFI handler."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_ffi_cpu", "jaxseg XLA FFI CPU kernels.", -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__ffi_cpu(void) { return PyModule_Create(&kModule); }
