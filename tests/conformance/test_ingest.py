"""Conformance: how lines are split, validated, sanitised and tagged (etsy-semantics.md §1).

Every case must produce exactly the Graphite output of Etsy statsd 0.9.0, internal counters
(packets_received, metrics_received, bad_lines_seen, numStats) included. ``{k}`` is the case's
token; see harness.py.
"""

from __future__ import annotations

import pytest

from conformance.harness import Case, ConformanceRunner, case, ids, ordered

pytestmark = pytest.mark.conformance

NO_SANITIZE = {"keyNameSanitize": False}

CASES = ordered([
    # -- §1.1 packets and lines --
    case("multi_metric_packet",
         ["{k}.a:1|c\n{k}.b:2|c\n{k}.t:3|ms\n", "{k}.g:4|g\n\n{k}.s:x|s"],
         about="one datagram, several lines; trailing and empty lines are skipped silently"),
    case("several_datagrams_one_counter",
         ["{k}.a:1|c", "{k}.a:2|c", "{k}.a:3|c\n{k}.a:4|c"],
         about="packets_received counts datagrams, metrics_received counts lines"),
    case("only_empty_lines", ["\n", "\n\n\n"],
         about="a packet of empty lines counts as a packet, with no metric and no bad line"),
    case("multi_value_line",
         ["{k}.a:1|c:2|c:3|c", "{k}.mixed:1|c:5|g:7|ms:u1|s"],
         about="every ':' piece is a separate sample of the same key, of any type"),
    case("multi_value_with_bad_pieces",
         ["{k}.b:1|c:x|c:2|c", "{k}.c:1|c::2|c", "{k}.d:a:b|s"],
         about="each invalid piece counts one bad line; the valid ones still count"),
    case("crlf_and_whitespace_types",
         ["{k}.a:1|c\r\n{k}.b:5|g\r\n{k}.t:5|ms\r\n{k}.s:7|s\r\n",
          "{k}.u:5|ms \n{k}.v:2| c\n{k}.w:3|g \n{k}.x:4|c\t"],
         about="\\r and blanks around a type: validated untrimmed, dispatched trimmed"),
    case("bad_lines_of_every_kind",
         ["\n".join([
             "{k}.nocolon",
             "{k}.foo|c",
             "{k}.notype:1",
             "{k}.badval:abc|c",
             "{k}.emptyval:|c",
             "{k}.comma:1,5|c",
             "{k}.nan:NaN|c",
             "{k}.under:1_000|c",
             "{k}.badg:abc|g",
             "{k}.emptyg:|g",
             "{k}.negms:-5|ms",
             "{k}.badms:abc|ms",
             "{k}.emptyms:|ms",
             "{k}.rate_at:1|c|@",
             "{k}.rate_abc:1|c|@abc",
             "{k}.rate_neg:1|c|@-1",
             "{k}.rate_noat:1|c|0.5",
             "{k}.rate_empty:1|c|",
             "{k}.rate_neg_g:1|g|@-0.5",
             "{k}.rate_underscore:1|c|@0_5",
             "{k}.rate_nan:1|c|@NaN",
             "{k}.rate_inf_word:1|c|@inf",
             "{k}.rate_minus_zero:1|c|@-0",
             "{k}.ok:1|c",
             "{k}.okg:3|g",
             "{k}.okms:2|ms",
             "{k}.oks:x|s",
             "{k}.extra:1|c|@0.5|extrafield",
         ])],
         about="bad pieces of all kinds mixed with valid ones in one packet"),
    case("bad_values_other_types",
         ["{k}.hx:abc|h\n{k}.hy:|h\n{k}.hz:1|h|@abc"],
         about="an invalid h line is a bad line for both daemons"),
    case("value_syntax",
         ["\n".join([
             "{k}.lead_space: 5|c",
             "{k}.trail_space:5 |c",
             "{k}.hex:0x1F|c",
             "{k}.hex_upper:0X1f|c",
             "{k}.octal:0o17|c",
             "{k}.binary:0b101|c",
             "{k}.exp:1e3|c",
             "{k}.exp_upper:2E2|c",
             "{k}.plus:+10|c",
             "{k}.dot_first:.5|c",
             "{k}.dot_last:5.|c",
             "{k}.zeros:00012|c",
             "{k}.neg_hex:-0x10|c",
             "{k}.plus_hex_g:+0x10|g",
             "{k}.hex_g:0x10|g",
             "{k}.hex_ms:0x10|ms",
             "{k}.exp_ms:1e2|ms",
             "{k}.negzero_ms:-0|ms",
             "{k}.tab_value:\t7|c",
         ])],
         about="JavaScript Number() syntax: blanks around, hex/octal/binary, exponents, signs"),
    case("sample_rate_syntax",
         ["\n".join([
             "{k}.half:1|c|@0.5",
             "{k}.dot:1|c|@.5",
             "{k}.trailing_dot:1|c|@1.",
             "{k}.trailing_blank:1|c|@0.5 ",
             "{k}.two:1|c|@2",
             "{k}.one:1|c|@1",
             "{k}.tenth:1|c|@0.1",
             "{k}.third:1|c|@0.3",
         ])],
         about="rates: '@' and a plain decimal; trailing blanks are fine; rates above 1 too"),
    # -- §1.3 sanitising --
    case("sanitize_names",
         ["\n".join([
             "{k}.fo/o:1|c",
             "{k}.b ar:1|c",
             "{k}.multi   space:1|c",
             "{k}.foo+bar:1|c",
             "{k}.a#b@c,d%e:1|c",
             "{k}.ünï©ødé:1|c",
             "{k}.tab\there:1|c",
             " {k}lead:1|c",
             "{k}trail :1|c",
             "{k}..dots..:1|c",
             "{k}.cr\rinside:1|c",
             "{k}.semi;x=y:1|c",
             "{k}.dash-under_score.Caps09:1|c",
         ])],
         about="whitespace runs -> _, / -> -, everything outside [a-zA-Z0-9_.;=-] deleted"),
    case("sanitize_unicode_and_control",
         ["{k}.nbsp\u00a0x:1|c\n{k}.emsp\u2003x:1|c\n{k}.ideo\u3000x:1|c\n"
          "{k}.bom\ufeffx:1|c\n{k}.vt\x0bx:1|c\n{k}.ff\x0cx:1|c\n{k}.us\x1fx:1|c\n"
          "{k}.nel\u0085x:1|c\n{k}.lsep\u2028x:1|c",
          b"{k}.bin\xff\xfex:1|c\n{k}.half\xc3x:1|c"],
         about="JS /\\s/ includes Unicode spaces (NBSP, EM SPACE, BOM, ...); invalid UTF-8 is "
               "decoded to U+FFFD, then deleted"),
    case("sanitize_same_output_name",
         ["{k}.a b:1|c\n{k}.a_b:2|c\n{k}.a\tb:3|c"],
         about="different raw names that sanitise to one key are one counter"),
    case("sanitize_off_names", ["{k}.fo/o:1|c\n{k}.b ar:2|c\n{k}.b_ar:3|c\n{k}.x+y:4|g"],
         config=NO_SANITIZE,
         about="keyNameSanitize false: raw keys are distinct, the backend sanitises the name part"),
    case("sanitize_off_tags",
         ["{k}.t;k=a/b:1|c\n{k}.d:1|c|#env:a+b,x:y z\n{k}.t2 x;y=1 2:1|ms"],
         config=NO_SANITIZE,
         about="keyNameSanitize false: tags are sent unsanitised"),
    # -- §1.2 tags --
    case("dogstatsd_tags",
         ["\n".join([
             "{k}.t1:1|c|#env:prod,region:us",
             "{k}.t2:1|c|#flag",
             "{k}.t3:1|c|#k:v;w;z",
             "{k}.t4:1|c|#a:b:c",
             "{k}.t5:1|c|#",
             "{k}.t6:1|c|#x:1|#y:2",
             "{k}.t7:1|c|#b:2,a:1",
             "{k}.t8:1|c|#tag1:val1,tag2:val;1",
             "{k}.t9:1|c:2|c|#e:p",
             "{k}.t10:1|c|#sp ace:a b",
             "{k}.t11:1|c|#",
             "{k}.t12:1|c|#,",
         ])],
         about="|#k:v tags become ;k=v; only the first ; and : of a tag are replaced"),
    case("tags_on_every_type",
         ["{k}.tm:5|ms|#env:prod\n{k}.tm:7|ms|#env:prod\n{k}.tg:3|g|#env:prod\n"
          "{k}.ts:x|s|#env:prod\n{k}.tc:2|c|@0.5|#env:prod"],
         about="tags come after the stat name: stats.timers.<key>.<stat>;env=prod"),
    case("graphite_tags",
         ["{k}.g1;env=prod:1|c\n{k}.g2;a=b;c=d:5|ms\n{k}.g3;env=prod:5|g\n{k}.g4;e=f:z|s"],
         about="Graphite-style tags written in the key survive sanitising"),
    case("graphite_and_dogstatsd_tags",
         ["{k}.t7;x=y:1|c|#k:v\n{k}.t8;x=y:1|c|#x:z"],
         about="both styles combine: t7;x=y;k=v"),
    case("default_flags_output", "{k}.a:1|c\n{k}.t:2|ms\n{k}.g:3|g\n{k}.s:x|s", [],
         tallyd_defaults=True,
         about="tallyd with nothing but the Etsy config and addresses emits exactly what Etsy "
               "emits (same numStats), plus its own metrics under <prefix_stats>.tallyd."),
    case("tag_variants_are_distinct_keys",
         ["{k}.same:1|c|#env:a\n{k}.same:2|c|#env:b\n{k}.same:4|c"],
         about="each tag set is its own series"),
])


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_matches_etsy(case: Case, conformance_runner: ConformanceRunner) -> None:
    conformance_runner.run(case)
