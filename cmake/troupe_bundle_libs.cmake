# Install-time half of cmake/TroupeInstall.cmake: runs inside `cmake --install`, copies the shared libraries
# that TROUPE_BUNDLE_EXECUTABLES need into ${CMAKE_INSTALL_PREFIX}/${TROUPE_BUNDLE_DESTINATION}, except the
# ones every target machine has or must bring itself. Inputs (set by the install(CODE) before include()):
#   TROUPE_BUNDLE_EXECUTABLES   build-tree executables (their build RUNPATH resolves what they link)
#   TROUPE_BUNDLE_DIRECTORIES   more directories to search
#   TROUPE_BUNDLE_DESTINATION   directory under the prefix (lib)
#
# What is not bundled, and why:
# - glibc (libc, libm, libpthread, libdl, librt, ... and the loader) and the GCC runtime (libstdc++,
#   libgcc_s): they belong to the target system; a copy of libc next to a foreign loader breaks. The binary
#   needs glibc >= the build machine's (2.36 on Debian 12; the GPU machine has 2.39).
# - The CUDA driver (libcuda, libnvidia-*): it must be the one matching the installed kernel module. NEVER
#   bundled. (cudart dlopen()s it, so it is not even a NEEDED entry; excluded here in case it becomes one.)
# - The CUDA toolkit libraries (cudart, cuBLAS/cuBLASLt, NCCL, ...): hundreds of MB and tied to the driver;
#   the GPU machine has CUDA 13. The installed RUNPATH names their usual directories (TroupeInstall.cmake).
# - OpenSSL (libssl.so.3, libcrypto.so.3) and PCRE2 (libpcre2-8.so.0): Debian 12 and Ubuntu 24.04 both ship
#   these exact sonames (ABI-stable within a soname), and the system copies get security updates. Matched by
#   full soname on purpose: a build against another soname (OpenSSL 1.1, say) bundles it.
# Everything else (today libcaf_core.so.0.17.6 and libyaml-cpp.so.0.7; libcaf_io when linked) is copied.
# (The GPU machine, Ubuntu 24.04, has no CAF and only libyaml-cpp.so.0.8; it has the three sonames above.)
#
# Bundled libraries carry no RUNPATH of their own (no patchelf here), and an executable's RUNPATH only
# applies to its direct dependencies: a bundled library needed only by another bundled library would not
# be found. Today every bundled library is a direct dependency of the executable (libcaf_io's libcaf_core
# is one too); the install test (tests/install) runs the tree with a clean environment to catch a change.

set(_troupe_present "")
foreach(_f IN LISTS TROUPE_BUNDLE_EXECUTABLES)
  if(EXISTS "${_f}")
    list(APPEND _troupe_present "${_f}")
  endif()
endforeach()

if(_troupe_present)
  file(GET_RUNTIME_DEPENDENCIES
    EXECUTABLES ${_troupe_present}
    RESOLVED_DEPENDENCIES_VAR _troupe_resolved
    UNRESOLVED_DEPENDENCIES_VAR _troupe_unresolved
    CONFLICTING_DEPENDENCIES_PREFIX _troupe_conflict
    DIRECTORIES ${TROUPE_BUNDLE_DIRECTORIES}
    # Matched against the NEEDED names before they are looked up: excluded ones are neither resolved nor
    # followed.
    PRE_EXCLUDE_REGEXES
      # glibc and the loader
      "^linux-vdso\\.so" "^ld-linux"
      "^lib(c|m|dl|rt|pthread|resolv|util|anl|mvec|nsl|BrokenLocale|thread_db|nss_[a-z0-9_]+)\\.so"
      # the GCC runtime
      "^libstdc\\+\\+\\.so" "^libgcc_s\\.so"
      # the CUDA driver
      "^libcuda\\.so" "^libnvidia-" "^libcudadebugger\\.so" "^libnvcuvid\\.so"
      # the CUDA toolkit and NCCL
      "^lib(cudart|cublas|cublasLt|cufft|cufile|curand|cusolver|cusparse|cusparseLt|nvrtc|nvrtc-builtins)\\.so"
      "^lib(nvJitLink|nvToolsExt|nvtx3interop|cupti|nvperf_host|cudnn[a-z_]*|nccl|nvshmem[a-z_]*)\\.so"
      # present with these sonames on Debian 12 and Ubuntu 24.04
      "^libssl\\.so\\.3$" "^libcrypto\\.so\\.3$" "^libpcre2-8\\.so\\.0$"
    # Matched against resolved paths: whatever comes out of a CUDA toolkit or driver directory.
    POST_EXCLUDE_REGEXES
      "^/usr/local/cuda" "/targets/[^/]+-linux/lib/" "/nvidia/"
  )
  if(_troupe_conflict_FILENAMES)
    set(_troupe_msg "")
    foreach(_n IN LISTS _troupe_conflict_FILENAMES)
      string(APPEND _troupe_msg "\n  ${_n}: ${_troupe_conflict_${_n}}")
    endforeach()
    message(FATAL_ERROR "troupe install: libraries found in more than one place:${_troupe_msg}")
  endif()
  if(_troupe_unresolved)
    string(REPLACE ";" ", " _troupe_msg "${_troupe_unresolved}")
    message(FATAL_ERROR "troupe install: cannot find ${_troupe_msg} (needed by ${_troupe_present}); "
                        "put its directory in TROUPE_BUNDLE_DIRECTORIES (cmake/TroupeInstall.cmake) or "
                        "exclude it in cmake/troupe_bundle_libs.cmake")
  endif()
  foreach(_lib IN LISTS _troupe_resolved)
    # Copy the file itself under the name the executable asks for (libyaml-cpp.so.0.7 is a symlink to
    # libyaml-cpp.so.0.7.0): no symlinks in the tree, so any copying tool carries it intact.
    get_filename_component(_name "${_lib}" NAME)
    get_filename_component(_real "${_lib}" REALPATH)
    file(INSTALL DESTINATION "${CMAKE_INSTALL_PREFIX}/${TROUPE_BUNDLE_DESTINATION}" TYPE FILE
         RENAME "${_name}" FILES "${_real}")
  endforeach()
endif()
