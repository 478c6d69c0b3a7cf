#!/bin/sh
# The public header compiles on its own as strict C11 (and as C++ if a C++
# compiler is present).
# usage: check_header.sh CC INCLUDE_DIR GENERATED_DIR (where the build
# writes tinkerloss_version.h)
set -eu
cc=$1 inc=$2 gen=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#include "tinkerloss.h"\nint main(void) { return tl_isa_best() < 0; }\n' > "$tmp/a.c"
"$cc" -std=c11 -pedantic -Werror -Wall -Wextra -I "$inc" -I "$gen" -c "$tmp/a.c" -o "$tmp/a.o"
for h in tinkerloss.h tinkerloss_io.h; do
    "$cc" -std=c11 -pedantic -Werror -Wall -Wextra -fsyntax-only -x c \
        -I "$inc" -I "$gen" "$inc/$h"
done
# included twice: the include guard holds
printf '#include "tinkerloss_io.h"\n#include "tinkerloss.h"\n#include "tinkerloss_io.h"\n' > "$tmp/b.c"
"$cc" -std=c11 -pedantic -Werror -I "$inc" -I "$gen" -fsyntax-only "$tmp/b.c"
echo "tinkerloss.h and tinkerloss_io.h compile alone with -std=c11 -pedantic -Werror"
