// Time bounds of the tests' speed checks are multiplied by MPA_TEST_TIME_SCALE: 1 normally, more
// in sanitizer builds (CMakeLists.txt defines it with MPA_SANITIZE), whose instrumented code runs
// several times slower. The checks are there to catch a slower algorithm, not instrumentation.
#pragma once

#ifndef MPA_TEST_TIME_SCALE
#define MPA_TEST_TIME_SCALE 1
#endif
