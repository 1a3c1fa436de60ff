# Soak curves (docs/reliability.md, "Soak"):
#   gnuplot -e "in='docs/soak/soak.tsv'; chat='docs/soak/chat.tsv'; out='docs/soak/soak.png'" docs/soak/plot.gp
# in: the rows of docs/soak/soak.cpp; chat: those of docs/soak/chat_soak.py.
if (!exists("in") || !exists("chat") || !exists("out")) { print "plot.gp: set in=, chat= and out="; exit }
set terminal pngcairo size 1100,900 enhanced font "sans,10"
set output out
set datafile separator "\t"
set key autotitle columnhead top right
set grid
set multiplot layout 2,2 title "soak: stories260K, KV budget 128 tokens per head"
set xlabel "generated tokens (thousands)"
set ylabel "bytes (KiB)"
set yrange [0:*]
set title "KV cache (defkv\\_get\\_kv\\_stats)"
plot in using ($1/1000):($3/1024) with lines lw 2 title "in use", \
     in using ($1/1000):($5/1024) with lines lw 2 dt 2 title "reserved (pool)"
set ylabel "MiB"
set key bottom right
set title "process memory"
plot in using ($1/1000):($6/1048576) with lines lw 2 title "RSS (/proc/self/statm)", \
     in using ($1/1000):($7/1048576) with lines lw 2 title "heap allocated (mallinfo2)"
set ylabel "ms per generated token"
set title "time per token (per 1000 tokens; shared machine, nice 19)"
plot in using ($1/1000):8 with lines lw 1 title "ms/token"
set xlabel "turn"
set ylabel "MiB / KiB"
set key center right
set title "500-turn defkv chat through a pipe"
plot chat using 1:($5/1024) with lines lw 2 title "RSS (MiB)", \
     chat using 1:3 with lines lw 2 title "KV in use (KiB)"
unset multiplot
