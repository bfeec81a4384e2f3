# Small helpers shared by every folder.

# ihip_add_test(<file.cc> [LABELS <label>...] [LIBS <target>...] [TIMEOUT <s>])
# One gtest binary per test file, named after the file, registered with ctest. Tests labelled
# `gpu` must skip themselves (GTEST_SKIP) when no GPU is present.
function(ihip_add_test file)
  cmake_parse_arguments(ARG "" "TIMEOUT" "LABELS;LIBS" ${ARGN})
  get_filename_component(name ${file} NAME_WE)
  add_executable(${name} ${file})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gtest_main)
  add_test(NAME ${name} COMMAND ${name})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 900)
  endif()
  set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT})
  if(ARG_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}")
  endif()
endfunction()
