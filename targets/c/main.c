/*
 * remanence C target: main() hands argv to the C SDK's scenario registry
 * (../sdk/c/remanence.h); each scenarios_*.c file registers its scenarios
 * with REMANENCE_SCENARIO("name", fn).
 */
#include "remanence.h"

int main(int argc, char **argv)
{
    return rem_main(argc, argv);
}
