# The install tree. `cmake --install <build> --prefix DIR` makes a self-contained, relocatable tree:
#   DIR/bin/troupe              RUNPATH $ORIGIN/../lib (CUDA builds: then the CUDA library dirs, below)
#   DIR/bin/troupe_gpu_tests    component `tests`, installed only where it was built (CUDA builds)
#   DIR/lib/                    the shared libraries the binaries need that a bare Ubuntu 24.04 / Debian 12
#                               lacks (CAF, yaml-cpp), found by file(GET_RUNTIME_DEPENDENCIES) at install time
#   DIR/share/troupe/           configs/, models/default, dashboards/
# The tree can be moved anywhere (no absolute path into the build or the prefix) and carried to a machine
# without CAF or yaml-cpp, such as the GPU machine (docs/cuda.md). Components: `runtime` (troupe, its
# libraries and share/) and `tests` (the GPU test binary and its libraries); a plain `cmake --install`
# installs both, `--component runtime` only the server. The build-tree rpath is unchanged (CMake rewrites
# it to INSTALL_RPATH in the installed copy only).
# Included from the top-level CMakeLists.txt after every target exists.

# CUDA libraries (cudart, cuBLAS/cuBLASLt, NCCL) are not bundled: hundreds of MB, and they must match the
# host's driver. Instead their usual locations follow $ORIGIN/../lib in the RUNPATH, so the tree starts on
# the GPU machine (CUDA 13 at /usr/local/cuda-13.0, lib64 under /usr/local/cuda) without any environment.
# LD_LIBRARY_PATH is searched before RUNPATH, so an explicit one still picks another toolkit. A directory
# that does not exist costs the loader one failed lookup. Empty it to leave CUDA to LD_LIBRARY_PATH alone.
set(TROUPE_INSTALL_CUDA_RPATH "/usr/local/cuda/lib64;/usr/local/cuda-13.0/targets/x86_64-linux/lib"
    CACHE STRING "RUNPATH entries after \$ORIGIN/../lib for the CUDA libraries in installed CUDA builds")

set(TROUPE_INSTALL_RPATH "$ORIGIN/../lib")
if(TROUPE_HAVE_CUDA)
  list(APPEND TROUPE_INSTALL_RPATH ${TROUPE_INSTALL_CUDA_RPATH})
endif()

# troupe_install_runtime_dependencies(COMPONENT c TARGETS t...): gives each existing target the install
# RUNPATH and, at install time, copies the non-system libraries it needs into DIR/lib (component c). The
# targets' own install(TARGETS) rules stay next to them (cli/, tests/gpu/). A target that is configured but
# not built is skipped, like its OPTIONAL install rule.
function(troupe_install_runtime_dependencies)
  cmake_parse_arguments(arg "" "COMPONENT" "TARGETS" ${ARGN})
  set(files "")
  foreach(t IN LISTS arg_TARGETS)
    if(TARGET ${t})
      set_property(TARGET ${t} PROPERTY INSTALL_RPATH "${TROUPE_INSTALL_RPATH}")
      list(APPEND files "$<TARGET_FILE:${t}>")
    endif()
  endforeach()
  if(NOT files)
    return()
  endif()
  # Search dirs for libraries the build-tree RUNPATH does not name (the CUDA toolkit's, for instance).
  set(dirs "")
  if(TROUPE_HAVE_CUDA AND CUDAToolkit_LIBRARY_DIR)
    list(APPEND dirs "${CUDAToolkit_LIBRARY_DIR}")
  endif()
  install(CODE "
    set(TROUPE_BUNDLE_EXECUTABLES \"${files}\")
    set(TROUPE_BUNDLE_DIRECTORIES \"${dirs}\")
    set(TROUPE_BUNDLE_DESTINATION \"lib\")
    include(\"${CMAKE_CURRENT_FUNCTION_LIST_DIR}/troupe_bundle_libs.cmake\")
  " COMPONENT ${arg_COMPONENT})
endfunction()

troupe_install_runtime_dependencies(COMPONENT runtime TARGETS troupe)
troupe_install_runtime_dependencies(COMPONENT tests TARGETS troupe_gpu_tests)

# Data: the shipped configs, the embedded model and the Grafana/Prometheus files. configs/default.yaml
# names `model: models/default` relative to the working directory: start from DIR/share/troupe, or pass
# --model DIR/share/troupe/models/default.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/configs/ DESTINATION share/troupe/configs COMPONENT runtime)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/models/default/ DESTINATION share/troupe/models/default COMPONENT runtime)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/dashboards/ DESTINATION share/troupe/dashboards COMPONENT runtime)
