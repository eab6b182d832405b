// Python module object for leo_kernels._C. Kernels register themselves with the
// dispatcher (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in their own files);
// this file only reports how the extension was built.
#include <Python.h>

namespace {

PyObject* with_cuda(PyObject*, PyObject*) {
#ifdef LEO_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyObject* with_openmp(PyObject*, PyObject*) {
#ifdef _OPENMP
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"with_cuda", with_cuda, METH_NOARGS, "True when the CUDA kernels were compiled in."},
    {"with_openmp", with_openmp, METH_NOARGS, "True when the CPU kernels use OpenMP."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "leo_kernels compiled kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
