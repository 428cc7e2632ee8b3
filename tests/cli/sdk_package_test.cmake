# The installed SDK as its users consume it: `cmake --install` into a temporary
# prefix, then client/examples/quickstart.cpp built out of tree twice, through
# find_package(EngramClient) and through `pkg-config --cflags --libs engram-client`,
# and each program run (against no server: it must start and exit 3). CTest runs it
# as sdk.install_package (tests/CMakeLists.txt); every step has a time limit.
#
#   cmake -DBUILD_DIR=… -DSOURCE_DIR=… -DWORK_DIR=… -DCXX=… -DLIBDIR=lib -P sdk_package_test.cmake
foreach(var BUILD_DIR SOURCE_DIR WORK_DIR CXX LIBDIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "sdk_package_test: -D${var}=… is required")
  endif()
endforeach()
set(step_timeout 600)  # seconds; one compile of the quickstart takes well under a minute
set(prefix ${WORK_DIR}/prefix)
set(example ${SOURCE_DIR}/client/examples/quickstart.cpp)

# Runs a command; any failure (or timeout) fails the test with its output.
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out
                  TIMEOUT ${step_timeout})
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}")
  endif()
  set(output "${out}" PARENT_SCOPE)
endfunction()

# The quickstart exits 3 when the server cannot be reached: proof that it links
# and runs, without a server.
function(run_example binary)
  execute_process(COMMAND ${binary} http://127.0.0.1:1 RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out
                  TIMEOUT 120)
  if(NOT rc EQUAL 3)
    message(FATAL_ERROR "${binary} against no server: expected exit 3, got ${rc}:\n${out}")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR}/consumer)

# `cmake --install` rewrites the build tree's install_manifest.txt, which may list a
# real install (for uninstalling it): keep it as it was.
set(manifest ${BUILD_DIR}/install_manifest.txt)
if(EXISTS ${manifest})
  file(READ ${manifest} saved_manifest)
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out TIMEOUT ${step_timeout})
if(DEFINED saved_manifest)
  file(WRITE ${manifest} "${saved_manifest}")
else()
  file(REMOVE ${manifest})
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed (${rc}):\n${out}")
endif()
foreach(f ${LIBDIR}/libengram_client.a include/engram/client.hpp ${LIBDIR}/cmake/EngramClient/EngramClientConfig.cmake
          ${LIBDIR}/cmake/EngramClient/EngramClientConfigVersion.cmake ${LIBDIR}/pkgconfig/engram-client.pc)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "cmake --install did not install ${f}")
  endif()
endforeach()

# 1. CMake: find_package and the exported target, as client/README.md shows. It sets
# no C++ standard: the target brings C++23.
file(WRITE ${WORK_DIR}/consumer/CMakeLists.txt "
cmake_minimum_required(VERSION 3.25)
project(engram_quickstart CXX)
find_package(EngramClient 0.1 REQUIRED)
add_executable(quickstart ${example})
target_link_libraries(quickstart PRIVATE EngramClient::engram_client)
")
run("configuring the find_package consumer" ${CMAKE_COMMAND} -S ${WORK_DIR}/consumer -B ${WORK_DIR}/consumer/build
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_CXX_COMPILER=${CXX})
run("building the find_package consumer" ${CMAKE_COMMAND} --build ${WORK_DIR}/consumer/build)
run_example(${WORK_DIR}/consumer/build/quickstart)

# 2. pkg-config.
set(ENV{PKG_CONFIG_PATH} ${prefix}/${LIBDIR}/pkgconfig)
run("pkg-config" pkg-config --cflags --libs engram-client)
string(STRIP "${output}" flags)
separate_arguments(flags UNIX_COMMAND "${flags}")
run("compiling with pkg-config flags" ${CXX} -std=c++23 ${example} -o ${WORK_DIR}/quickstart-pc ${flags})
run_example(${WORK_DIR}/quickstart-pc)

file(REMOVE_RECURSE ${WORK_DIR})
message(STATUS "the installed SDK builds through find_package(EngramClient) and pkg-config")
