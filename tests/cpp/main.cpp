// tests/cpp/main.cpp — the test binary's entry point.
//
// Two modes:
// - `pyattach_tests --pyattach-child=NAME [args...]`: run one child case (child_process.hpp) and
//   exit with its status. No GoogleTest, no shared interpreter: the case sets up what it needs.
// - otherwise: GoogleTest, with one shared CPython interpreter (a pyattach::interpreter made on
//   the main thread before the first test and destroyed after the last). Tests that need their
//   own interpreter lifetime run in child processes.
#include <gtest/gtest.h>

#include <memory>

#include "child_process.hpp"
#include "helpers.hpp"

namespace {
class shared_interpreter : public ::testing::Environment {
 public:
  void SetUp() override { py_ = std::make_unique<pyattach::interpreter>(); }
  void TearDown() override { py_.reset(); }

 private:
  std::unique_ptr<pyattach::interpreter> py_;
};
}  // namespace

int main(int argc, char** argv) {
  int rc = 0;
  if (testutil::dispatch_child_case(argc, argv, &rc)) return rc;
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new shared_interpreter);
  return RUN_ALL_TESTS();
}
