// A floor under the stack size that any library of mpa_server asks for its threads.
//
// glibc carves a thread's static TLS out of the stack size it was asked for, and OpenBLAS alone
// has 60 KB of TLS. The metrics endpoint's HTTP server (civetweb, under prometheus-cpp) asks for
// 100 KB per worker thread, a size fixed when the library is built (it has no option for it); in
// this process that left its workers about 40 KB, and writing the error page for an unknown path
// overflowed it: one request killed the server. Raising a small request to kMinThreadStackBytes
// gives such threads what they expect to have; larger requests and threads that ask for no size
// (the default of 8 MB) are untouched. The memory is reserved, not committed: a thread uses only
// the pages it touches.
//
// This definition takes the place of libc's for every library the binary loads (the executable
// exports it; see server/CMakeLists.txt) and forwards to libc's.
#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>

namespace {

constexpr size_t kMinThreadStackBytes = size_t{1} << 20;

using SetStackSize = int (*)(pthread_attr_t*, size_t);

SetStackSize LibcSetStackSize() {
  static const SetStackSize libc =
      reinterpret_cast<SetStackSize>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  return libc;
}

}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t stack_size) {
  const SetStackSize libc = LibcSetStackSize();
  if (libc == nullptr) return ENOSYS;
  return libc(attr, std::max(stack_size, kMinThreadStackBytes));
}
