# Shared by the benchmark scripts: reading RESULT lines and taking medians.

# field KEY LINE: value of KEY=value in a RESULT line.
field() {
    tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"
}

# median of the arguments (mean of the middle two for an even count);
# "na" values are ignored.
median() {
    printf '%s\n' "$@" | { grep -v '^na$' || true; } | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "na"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

# ratio A B: A / B to two decimals; "na" when either is missing or B is 0.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "na" || b == "na" || b + 0 == 0) print "na"; else printf "%.2f", a / b }'
}
