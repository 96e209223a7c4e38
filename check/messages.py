"""Every word `desanet check` says to a person, in English and Bahasa Indonesia, and how numbers are written.

Why a dict and not gettext: two languages and about a hundred messages, and the tests must prove that every
message exists in both languages, takes the same placeholders in both, and that no English is left in the
Indonesian output. With a catalog keyed by name that is a loop over one dict; gettext would add a compile step
(.po → .mo) to the package build and key the catalog by English text, which is what we must not show.

Messages take only preformatted values (strings): numbers are written by the `fmt_*` helpers here, which use
the language's decimal mark (Indonesian writes 3,2 Mbit/s and 09.00). Error details that come from other
modules (exception texts) are English and are never passed into a template; the CLI shows them only in
English output and in JSON.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

Lang = Literal["en", "id"]
LANGS: Final[tuple[Lang, ...]] = ("en", "id")

# fmt: off
MESSAGES: Final[dict[str, dict[Lang, str]]] = {
    # ------------------------------------------------------------------ header and profile
    "header": {
        "en": "{kind} {name} ({slug}) in kecamatan {kecamatan}, router {address}",
        "id": "{kind} {name} ({slug}), kecamatan {kecamatan}, router {address}",
    },
    "profile_line": {
        "en": "Profile {profile} {source}: needs {down} down and {up} up",
        "id": "Profil {profile} {source}: butuh {down} unduh dan {up} unggah",
    },
    "source_option": {"en": "(chosen with `--profile`)", "id": "(dipilih dengan `--profile`)"},
    "source_session": {
        "en": "(for the next session, “{title}”, {when})",
        "id": "(untuk sesi berikutnya, “{title}”, {when})",
    },
    "source_session_now": {
        "en": "(for the session running now, “{title}”)",
        "id": "(untuk sesi yang sedang berlangsung, “{title}”)",
    },
    "source_village": {"en": "(this village's profile)", "id": "(profil desa ini)"},
    "source_default": {"en": "(the inventory's default profile)", "id": "(profil bawaan inventaris)"},
    # ------------------------------------------------------------------ progress
    "stage_icmp": {
        "en": "ping: {count} echoes, one every {interval}",
        "id": "ping: {count} echo, satu setiap {interval}",
    },
    "stage_stamp": {
        "en": "video-like stream: {rate} packets/s of {size} bytes, DSCP {dscp}, for {duration}",
        "id": "aliran mirip video: {rate} paket/detik berukuran {size} byte, DSCP {dscp}, selama {duration}",
    },
    "stage_snmp": {"en": "router status over SNMP", "id": "status router lewat SNMP"},
    "stage_history": {
        "en": "history and the last rehearsal call from Prometheus",
        "id": "riwayat dan panggilan gladi terakhir dari Prometheus",
    },
    "stage_trace": {"en": "path trace to the router", "id": "penelusuran jalur ke router"},
    "stage_throughput_udp": {
        "en": "throughput rehearsal: a {down} stream toward the village, then {up} back",
        "id": "uji kecepatan: aliran {down} ke arah desa, lalu {up} ke arah NOC",
    },
    "stage_call_stream": {
        "en": "call-like stream: up to {rate}, yielding to other traffic as a video call does",
        "id": "aliran mirip panggilan: hingga {rate}, mengalah pada lalu lintas lain seperti panggilan video",
    },
    "stage_throughput_tcp": {
        "en": "TCP throughput toward the village, then back",
        "id": "kecepatan TCP ke arah desa, lalu ke arah NOC",
    },
    "progress_done": {"en": "done in {seconds}", "id": "selesai dalam {seconds}"},
    "progress_skipped": {"en": "skipped", "id": "dilewati"},
    "progress_failed": {"en": "failed", "id": "gagal"},
    # ------------------------------------------------------------------ the table
    "table_title": {"en": "Measured against profile {profile}", "id": "Hasil ukur dibandingkan profil {profile}"},
    "col_figure": {"en": "figure", "id": "ukuran"},
    "col_measured": {"en": "measured", "id": "terukur"},
    "col_ready_if": {"en": "ready if", "id": "siap jika"},
    "col_fails_if": {"en": "not ready if", "id": "tidak siap jika"},
    "col_result": {"en": "result", "id": "hasil"},
    "factor_rtt": {"en": "round-trip time, p95", "id": "waktu pulang-pergi, p95"},
    "factor_jitter": {"en": "jitter (delay variation)", "id": "variasi tunda (jitter)"},
    "factor_loss": {"en": "packet loss", "id": "paket hilang"},
    "factor_burst_loss": {"en": "burst loss (worst 200 ms)", "id": "hilang beruntun (200 ms terburuk)"},
    "factor_down": {"en": "download (to the village)", "id": "unduh (ke desa)"},
    "factor_up": {"en": "upload (to the NOC)", "id": "unggah (ke NOC)"},
    "factor_headroom": {"en": "spare capacity, router port", "id": "sisa kapasitas port router"},
    "state_pass": {"en": "pass", "id": "lolos"},
    "state_warn": {"en": "at risk", "id": "berisiko"},
    "state_fail": {"en": "FAIL", "id": "GAGAL"},
    "state_unmeasured": {"en": "not measured", "id": "tidak diukur"},
    # ------------------------------------------------------------------ the verdict
    "verdict_ready": {"en": "READY", "id": "SIAP"},
    "verdict_at_risk": {"en": "AT RISK", "id": "BERISIKO"},
    "verdict_not_ready": {"en": "NOT READY", "id": "TIDAK SIAP"},
    "verdict_unknown": {"en": "UNKNOWN", "id": "TIDAK DIKETAHUI"},
    "verdict_line": {
        "en": "Verdict: {verdict} for a {profile} call at {name}",
        "id": "Kesimpulan: {verdict} untuk panggilan {profile} di {name}",
    },
    "cannot_measure_line": {
        "en": "Verdict: CANNOT MEASURE {name}: {reason}",
        "id": "Kesimpulan: TIDAK DAPAT MENGUKUR {name}: {reason}",
    },
    "why_label": {"en": "Why", "id": "Sebab"},
    "also_label": {"en": "Also", "id": "Juga"},
    "advice_label": {"en": "What to try", "id": "Yang bisa dicoba"},
    "notes_label": {"en": "Notes", "id": "Catatan"},
    "mos_line": {
        "en": "Estimated call quality on this path: MOS {mos} of 5 (the rest of the call's path can only lower it).",
        "id": "Perkiraan kualitas panggilan di jalur ini: MOS {mos} dari 5 (sisa jalur panggilan hanya bisa "
              "menurunkannya).",
    },
    "elapsed_line": {"en": "Checked in {seconds}.", "id": "Diperiksa dalam {seconds}."},
    # ------------------------------------------------------------------ why, in plain words
    "why_rtt_warn": {
        "en": "round-trip time {value} is above the {limit} this profile needs: people will start talking over "
              "each other",
        "id": "waktu pulang-pergi {value} melebihi {limit} yang dibutuhkan profil ini: peserta akan mulai saling "
              "menyela",
    },
    "why_rtt_fail": {
        "en": "round-trip time {value} is above {fail}, well beyond the {limit} this profile needs: speech will lag "
              "and people will talk over each other",
        "id": "waktu pulang-pergi {value} melebihi {fail}, jauh di atas {limit} yang dibutuhkan profil ini: suara "
              "akan tertunda dan peserta akan saling menyela",
    },
    "why_jitter_warn": {
        "en": "jitter {value} is above the {limit} this profile needs: video will freeze and audio will break up",
        "id": "jitter {value} melebihi {limit} yang dibutuhkan profil ini: video akan macet dan suara akan "
              "putus-putus",
    },
    "why_jitter_fail": {
        "en": "jitter {value} is above {fail}, well beyond the {limit} this profile needs: video will freeze and "
              "audio will break up",
        "id": "jitter {value} melebihi {fail}, jauh di atas {limit} yang dibutuhkan profil ini: video akan macet "
              "dan suara akan putus-putus",
    },
    "why_loss_warn": {
        "en": "packet loss {value} is above the {limit} this profile allows: the picture will break into blocks "
              "and words will drop out",
        "id": "paket hilang {value} melebihi {limit} yang diizinkan profil ini: gambar akan pecah-pecah dan "
              "kata-kata akan hilang",
    },
    "why_loss_fail": {
        "en": "packet loss {value} is above {fail}, well beyond the {limit} this profile allows: video will freeze "
              "and words will drop out",
        "id": "paket hilang {value} melebihi {fail}, jauh di atas {limit} yang diizinkan profil ini: video akan "
              "macet dan kata-kata akan hilang",
    },
    "why_loss_total": {
        "en": "nothing came back from the router: no call is possible",
        "id": "tidak ada balasan dari router: panggilan tidak mungkin dilakukan",
    },
    "why_burst_loss_warn": {
        "en": "up to {value} of the packets were lost within 200 ms (limit {limit}): short dropouts in sound and "
              "picture",
        "id": "hingga {value} paket hilang dalam 200 ms (batas {limit}): suara dan gambar akan sesekali terputus "
              "sebentar",
    },
    "why_burst_loss_fail": {
        "en": "up to {value} of the packets were lost within 200 ms (above {fail}): whole words will go silent",
        "id": "hingga {value} paket hilang dalam 200 ms (di atas {fail}): kata-kata utuh akan hilang tanpa suara",
    },
    "why_down_warn": {
        "en": "download {value} is below the {limit} that leaves a safe margin over the {need} this profile needs: "
              "incoming video may drop to low quality",
        "id": "unduh {value} di bawah {limit} yang memberi cadangan aman di atas {need} yang dibutuhkan profil ini: "
              "kualitas video yang masuk bisa turun",
    },
    "why_down_fail": {
        "en": "download {value} is below {fail}, well short of the {need} this profile needs: incoming video will "
              "be blurred or stop",
        "id": "unduh {value} di bawah {fail}, jauh di bawah {need} yang dibutuhkan profil ini: video yang masuk "
              "akan buram atau berhenti",
    },
    "why_up_warn": {
        "en": "upload {value} is below the {limit} that leaves a safe margin over the {need} this profile needs: "
              "the others may see us in low quality",
        "id": "unggah {value} di bawah {limit} yang memberi cadangan aman di atas {need} yang dibutuhkan profil "
              "ini: peserta lain bisa melihat kita dengan kualitas rendah",
    },
    "why_up_fail": {
        "en": "upload {value} is below {fail}, well short of the {need} this profile needs: the others will see us "
              "blurred or frozen",
        "id": "unggah {value} di bawah {fail}, jauh di bawah {need} yang dibutuhkan profil ini: peserta lain akan "
              "melihat kita buram atau macet",
    },
    "why_headroom_warn": {
        "en": "only {value} is free on the router port, less than the {limit} that leaves a safe margin over the "
              "{need} the call needs: other traffic is filling the link",
        "id": "hanya {value} yang tersisa di port router, kurang dari {limit} yang memberi cadangan aman di atas "
              "{need} yang dibutuhkan panggilan: lalu lintas lain memenuhi koneksi",
    },
    "why_headroom_fail": {
        "en": "only {value} is free on the router port, less than {fail}, well short of the {need} the call needs: "
              "other traffic is filling the link",
        "id": "hanya {value} yang tersisa di port router, kurang dari {fail}, jauh di bawah {need} yang dibutuhkan "
              "panggilan: lalu lintas lain memenuhi koneksi",
    },
    "why_ready": {
        "en": "every measured figure is within what this profile needs; the closest to its limit is {factor}: "
              "{value} against {limit}",
        "id": "semua ukuran berada dalam batas kebutuhan profil ini; yang paling dekat ke batasnya adalah "
              "{factor}: {value} dibanding {limit}",
    },
    "why_unknown": {"en": "nothing could be measured", "id": "tidak ada yang dapat diukur"},
    # ------------------------------------------------------------------ what to try
    "advice_fibre": {
        "en": "Check the fibre: clean and reseat the connectors, look for sharp bends or crushed cable, and read "
              "the optical power on the router.",
        "id": "Periksa fiber: bersihkan dan pasang ulang konektor, cari tekukan tajam atau kabel yang terjepit, dan "
              "lihat daya optik di router.",
    },
    "advice_optics_weak": {
        "en": "The router receives only {rx} of light on {port} (weak below {weak}): a dirty connector or a "
              "damaged fibre is likely.",
        "id": "Router hanya menerima cahaya {rx} di {port} (lemah di bawah {weak}): kemungkinan konektor kotor "
              "atau fiber rusak.",
    },
    "advice_optics_lost": {
        "en": "The router reports no light arriving on {port}: the fibre is cut or unplugged.",
        "id": "Router melaporkan tidak ada cahaya yang masuk di {port}: fiber putus atau tercabut.",
    },
    "advice_port_errors": {
        "en": "The router's port {port} counted {count} errors during the check: check the cable and its "
              "connectors.",
        "id": "Port router {port} mencatat {count} galat selama pemeriksaan: periksa kabel dan konektornya.",
    },
    "advice_congestion": {
        "en": "Jitter comes from congestion: check who else is using the link (downloads, updates, video "
              "streaming, CCTV) and ask the NOC whether the kecamatan uplink is busy.",
        "id": "Jitter berasal dari kepadatan lalu lintas: periksa siapa lagi yang memakai koneksi (unduhan, "
              "pembaruan, siaran video, CCTV) dan tanyakan ke NOC apakah jalur kecamatan sedang padat.",
    },
    "advice_latency": {
        "en": "A long round trip usually means a queue somewhere on the path: pause large downloads and uploads "
              "in the office, then ask the NOC.",
        "id": "Waktu pulang-pergi yang lama biasanya berarti ada antrean di jalur: hentikan sementara unduhan dan "
              "unggahan besar di kantor, lalu hubungi NOC.",
    },
    "advice_rate": {
        "en": "Check who else is using the link in the office (downloads, updates, video streaming) and pause "
              "them during the session.",
        "id": "Periksa siapa lagi yang memakai koneksi di kantor (unduhan, pembaruan, siaran video) dan hentikan "
              "sementara selama sesi.",
    },
    "advice_contract_low": {
        "en": "The contract ({contract}) is below what this profile needs ({need}): ask for a higher contract, or "
              "hold the session with a lighter profile.",
        "id": "Kontrak ({contract}) di bawah kebutuhan profil ini ({need}): minta kontrak yang lebih tinggi, atau "
              "adakan sesi dengan profil yang lebih ringan.",
    },
    "advice_contract_ok": {
        "en": "The contract is {contract}; if the link stays well below it, report it to the NOC.",
        "id": "Kontraknya {contract}; jika koneksi tetap jauh di bawahnya, laporkan ke NOC.",
    },
    "advice_burst": {
        "en": "Losses come in bursts: a loose connector, a link that keeps dropping, or a full queue; check the "
              "fibre and the router's port, then ask the NOC.",
        "id": "Paket hilang secara beruntun: konektor longgar, koneksi yang putus-sambung, atau antrean yang "
              "penuh; periksa fiber dan port router, lalu hubungi NOC.",
    },
    "advice_headroom": {
        "en": "Other traffic fills the router port: find out who is using the link and pause it during the "
              "session.",
        "id": "Lalu lintas lain memenuhi port router: cari tahu siapa yang memakai koneksi dan hentikan sementara "
              "selama sesi.",
    },
    "advice_upstream_kecamatan": {
        "en": "The path degrades at hop {ttl} ({address}), on the kecamatan uplink, before the village: this is "
              "not a village problem. Call the NOC.",
        "id": "Jalur memburuk di hop {ttl} ({address}), di jalur kecamatan, sebelum desa: ini bukan masalah "
              "desa. Hubungi NOC.",
    },
    "advice_upstream_core": {
        "en": "The path degrades at hop {ttl} ({address}), in the district network before the kecamatan: this "
              "is not a village problem. Call the NOC.",
        "id": "Jalur memburuk di hop {ttl} ({address}), di jaringan kabupaten sebelum kecamatan: ini bukan "
              "masalah desa. Hubungi NOC.",
    },
    "advice_upstream": {
        "en": "The path degrades at hop {ttl} ({address}), before the village router: this is not a village "
              "problem. Call the NOC.",
        "id": "Jalur memburuk di hop {ttl} ({address}), sebelum router desa: ini bukan masalah desa. Hubungi "
              "NOC.",
    },
    "advice_last_mile": {
        "en": "The path degrades on the village's own link (hop {ttl}, the router {address}): the problem is "
              "here, between the kecamatan and this office.",
        "id": "Jalur memburuk di koneksi desa sendiri (hop {ttl}, router {address}): masalahnya ada di sini, "
              "antara kecamatan dan kantor ini.",
    },
    "advice_unreachable": {
        "en": "Check that the router and the fibre terminal (ONT) are powered on and their lights look normal; "
              "if they do, call the NOC.",
        "id": "Pastikan router dan terminal fiber (ONT) menyala dan lampunya normal; jika sudah, hubungi NOC.",
    },
    "advice_path_ends": {
        "en": "The path ends after hop {ttl} ({address}): the link beyond it, or the village router, is down.",
        "id": "Jalur berhenti setelah hop {ttl} ({address}): koneksi sesudahnya, atau router desa, mati.",
    },
    "advice_path_silent": {
        "en": "Nothing on the path answered, not even the first hop: check this computer's own connection "
              "(VPN, hotspot).",
        "id": "Tidak ada yang menjawab di jalur, bahkan hop pertama: periksa koneksi komputer ini sendiri (VPN, "
              "hotspot).",
    },
    "advice_ready": {
        "en": "Nothing to fix. Run the check again shortly before the session starts.",
        "id": "Tidak ada yang perlu diperbaiki. Jalankan pemeriksaan lagi sesaat sebelum sesi dimulai.",
    },
    "advice_permission": {
        "en": "Run it as root (`sudo desanet check …`) or give desanet the `CAP_NET_RAW` capability.",
        "id": "Jalankan sebagai root (`sudo desanet check …`) atau beri desanet kemampuan `CAP_NET_RAW`.",
    },
    # ------------------------------------------------------------------ path, router, history
    "path_clean": {
        "en": "Path: {hops} hops to the router, no step in latency or loss.",
        "id": "Jalur: {hops} hop ke router, tidak ada lonjakan tunda atau paket hilang.",
    },
    "path_step": {
        "en": "Path: {what} steps up at hop {ttl} ({address}), {where}.",
        "id": "Jalur: {what} melonjak di hop {ttl} ({address}), {where}.",
    },
    "path_not_reached": {
        "en": "Path: the router did not answer the trace; the last hop that answered is {ttl} ({address}).",
        "id": "Jalur: router tidak menjawab penelusuran; hop terakhir yang menjawab adalah {ttl} ({address}).",
    },
    "path_silent": {"en": "Path: no hop answered the trace.", "id": "Jalur: tidak ada hop yang menjawab penelusuran."},
    "step_latency": {"en": "latency", "id": "tunda"},
    "step_loss": {"en": "loss", "id": "paket hilang"},
    "step_both": {"en": "latency and loss", "id": "tunda dan paket hilang"},
    "where_village": {"en": "on the village's own link", "id": "di koneksi desa sendiri"},
    "where_kecamatan": {"en": "on the kecamatan uplink", "id": "di jalur kecamatan"},
    "where_core": {"en": "in the district network", "id": "di jaringan kabupaten"},
    "where_upstream": {"en": "before the village router", "id": "sebelum router desa"},
    "router_line": {
        "en": "Router: up for {uptime}; port {port} is {state} at {speed}, {errors} new errors during the check.",
        "id": "Router: menyala selama {uptime}; port {port} {state} pada {speed}, {errors} galat baru selama "
              "pemeriksaan.",
    },
    "router_line_short": {
        "en": "Router: up for {uptime}; port {port} is {state} at {speed}.",
        "id": "Router: menyala selama {uptime}; port {port} {state} pada {speed}.",
    },
    "port_up": {"en": "up", "id": "aktif"},
    "port_down": {"en": "down", "id": "mati"},
    "optics_line": {
        "en": "Optics {port}: receiving {rx}, sending {tx}.",
        "id": "Optik {port}: menerima {rx}, mengirim {tx}.",
    },
    "optics_line_no_light": {
        "en": "Optics {port}: NO LIGHT arriving, sending {tx}.",
        "id": "Optik {port}: TIDAK ADA CAHAYA yang masuk, mengirim {tx}.",
    },
    "optics_weak": {"en": "(weak)", "id": "(lemah)"},
    "router_restarted": {
        "en": "The router restarted {ago} ago: a power cut or a crash?",
        "id": "Router menyala ulang {ago} yang lalu: listrik padam atau macet?",
    },
    "history_title": {
        "en": "At this hour on earlier days (from Prometheus):",
        "id": "Pada jam yang sama di hari-hari sebelumnya (dari Prometheus):",
    },
    "history_row": {
        "en": "{day}: ready {ready} of the hour, packet loss {loss}",
        "id": "{day}: siap {ready} dari jam itu, paket hilang {loss}",
    },
    "history_row_no_data": {"en": "{day}: no data", "id": "{day}: tidak ada data"},
    "history_summary": {
        "en": "Ready at this hour on {good} of the {days} days with data.",
        "id": "Siap pada jam ini di {good} dari {days} hari yang punya data.",
    },
    "history_empty": {
        "en": "Prometheus has no data for this village at this hour in the last {days} days.",
        "id": "Prometheus tidak punya data desa ini pada jam ini dalam {days} hari terakhir.",
    },
    # ------------------------------------------------------------------ the last rehearsal call
    "call_title": {
        "en": "Last rehearsal call (from Prometheus): profile {profile}, ended {when}, {ago} ago.",
        "id": "Panggilan gladi terakhir (dari Prometheus): profil {profile}, selesai {when}, {ago} yang lalu.",
    },
    "call_none": {
        "en": "Last rehearsal call: Prometheus has none for this village in the last 24 hours.",
        "id": "Panggilan gladi terakhir: Prometheus tidak punya untuk desa ini dalam 24 jam terakhir.",
    },
    "call_dir_up": {
        "en": "Up (the village's camera, seen at the NOC)",
        "id": "Arah naik (kamera desa, diterima di NOC)",
    },
    "call_dir_down": {
        "en": "Down (the NOC's camera, seen in the village)",
        "id": "Arah turun (kamera NOC, diterima di desa)",
    },
    "call_outcome_holds": {"en": "holds", "id": "lancar"},
    "call_outcome_degraded": {"en": "DEGRADED", "id": "TERGANGGU"},
    "call_outcome_fails": {"en": "FAILS", "id": "GAGAL"},
    "call_line": {
        "en": "{direction}: {outcome}, decided by {figure}.",
        "id": "{direction}: {outcome}, karena {figure}.",
    },
    "call_line_holds": {
        "en": "{direction}: {outcome}; closest to its limit: {figure}.",
        "id": "{direction}: {outcome}; yang paling dekat ke batasnya: {figure}.",
    },
    "call_line_plain": {"en": "{direction}: outcome {outcome}.", "id": "{direction}: hasilnya {outcome}."},
    "call_line_no_video": {
        "en": "{direction}: {outcome}: no video arrived.",
        "id": "{direction}: {outcome}: tidak ada video yang sampai.",
    },
    "call_line_not_connected": {
        "en": "{direction}: {outcome}: the call did not connect.",
        "id": "{direction}: {outcome}: panggilan tidak tersambung.",
    },
    "call_fig_freeze": {
        "en": "video frozen {value} of the time ({bound})",
        "id": "video macet {value} dari waktu panggilan ({bound})",
    },
    "call_fig_fps": {"en": "{value} frames per second ({bound})", "id": "{value} gambar setiap detik ({bound})"},
    "call_fig_height": {
        "en": "a picture {value} lines high of the profile's {profile_height} ({bound})",
        "id": "gambar setinggi {value} baris dari {profile_height} baris profil ({bound})",
    },
    "call_fig_concealment": {
        "en": "{value} of the audio lost and concealed ({bound})",
        "id": "{value} suara hilang dan ditutupi ({bound})",
    },
    "call_bound_le": {
        "en": "holds up to {limit}, fails above {fail}",
        "id": "lancar sampai {limit}, gagal di atas {fail}",
    },
    "call_bound_ge": {
        "en": "holds from {limit}, fails below {fail}",
        "id": "lancar mulai {limit}, gagal di bawah {fail}",
    },
    "call_limited": {"en": "Its sender was limited by {reason}.", "id": "Pengirimnya dibatasi oleh {reason}."},
    "limitation_bandwidth": {"en": "bandwidth", "id": "lebar pita"},
    "limitation_cpu": {"en": "its processor", "id": "prosesornya"},
    "limitation_other": {"en": "something else", "id": "hal lain"},
    # ------------------------------------------------------------------ notes
    "note_no_stamp": {
        "en": "This village has no STAMP reflector in the inventory: jitter comes from the pings' round trips.",
        "id": "Desa ini tidak punya reflektor STAMP di inventaris: jitter dihitung dari waktu pulang-pergi ping.",
    },
    "note_stamp_failed": {
        "en": "The video-like stream could not run; the figures come from the pings.",
        "id": "Aliran mirip video tidak dapat berjalan; ukuran diambil dari ping.",
    },
    "note_stamp_silent": {
        "en": "The STAMP reflector did not answer while the router answered pings: is the reflector running?",
        "id": "Reflektor STAMP tidak menjawab padahal router menjawab ping: apakah reflektornya berjalan?",
    },
    "note_icmp_silent": {
        "en": "The router does not answer pings, but the video-like stream got through: the figures come from "
              "the stream.",
        "id": "Router tidak menjawab ping, tetapi aliran mirip video sampai: ukuran diambil dari aliran itu.",
    },
    "note_icmp_permission": {
        "en": "Pings need root or `CAP_NET_RAW`; only the video-like stream was measured.",
        "id": "Ping butuh root atau `CAP_NET_RAW`; hanya aliran mirip video yang diukur.",
    },
    "note_no_iperf3": {
        "en": "This village has no iperf3 server in the inventory: download and upload were not measured.",
        "id": "Desa ini tidak punya server iperf3 di inventaris: unduh dan unggah tidak diukur.",
    },
    "note_no_throughput": {
        "en": "Download and upload were not measured (`--no-throughput`).",
        "id": "Unduh dan unggah tidak diukur (`--no-throughput`).",
    },
    "note_throughput_session": {
        "en": "Download and upload were not measured: the village is in its session “{title}” now (`--force` tests "
              "anyway).",
        "id": "Unduh dan unggah tidak diukur: desa ini sedang dalam sesi “{title}” (`--force` tetap menguji).",
    },
    "note_throughput_session_soon": {
        "en": "Download and upload were not measured: the session “{title}” starts at {when} (`--force` tests "
              "anyway).",
        "id": "Unduh dan unggah tidak diukur: sesi “{title}” dimulai {when} (`--force` tetap menguji).",
    },
    "note_throughput_busy": {
        "en": "Download and upload were not measured: another throughput test is using this kecamatan's uplink; "
              "try again in a minute.",
        "id": "Unduh dan unggah tidak diukur: uji kecepatan lain sedang memakai jalur kecamatan ini; coba lagi "
              "sebentar lagi.",
    },
    "note_throughput_budget": {
        "en": "Download and upload were not measured: today's test budget for this village is spent (it resets "
              "at midnight WIB).",
        "id": "Unduh dan unggah tidak diukur: jatah uji hari ini untuk desa ini sudah habis (diatur ulang tengah "
              "malam WIB).",
    },
    "note_throughput_refused": {
        "en": "Download and upload were not measured: the test budget rules refused it.",
        "id": "Unduh dan unggah tidak diukur: aturan jatah uji menolaknya.",
    },
    "note_throughput_server_busy": {
        "en": "Download and upload were not measured: the village's iperf3 server is busy with another test.",
        "id": "Unduh dan unggah tidak diukur: server iperf3 desa sedang melayani uji lain.",
    },
    "note_throughput_failed": {"en": "The throughput test failed.", "id": "Uji kecepatan gagal."},
    "note_throughput_time": {
        "en": "Download and upload were skipped to finish within {limit}.",
        "id": "Unduh dan unggah dilewati agar selesai dalam {limit}.",
    },
    "note_throughput_unreachable": {
        "en": "Download and upload were not measured: the router cannot be reached.",
        "id": "Unduh dan unggah tidak diukur: router tidak dapat dihubungi.",
    },
    "note_udp_rehearsal": {
        "en": "Download and upload are what a video-like UDP stream of {down} / {up} got through: a figure near "
              "the rate sent means at least that much is available.",
        "id": "Unduh dan unggah adalah yang berhasil dilewatkan aliran UDP mirip video sebesar {down} / {up}: "
              "angka yang mendekati laju kiriman berarti paling sedikit sebesar itu tersedia.",
    },
    "note_under_load": {
        "en": "While testing the {direction}, the stream lost {loss} of its packets (jitter {jitter}).",
        "id": "Saat menguji {direction}, aliran kehilangan {loss} paketnya (jitter {jitter}).",
    },
    "note_call_stream": {
        "en": "A call-like stream that yields to other traffic as a video call does held {held} of {rate} ({share}); "
              "this figure does not change the verdict yet (docs/readiness.md).",
        "id": "Aliran mirip panggilan yang mengalah pada lalu lintas lain seperti panggilan video bertahan pada {held} "
              "dari {rate} ({share}); angka ini belum mengubah penilaian (docs/readiness.md).",
    },
    "note_call_stream_failed": {
        "en": "The call-like stream could not run.",
        "id": "Aliran mirip panggilan tidak dapat dijalankan.",
    },
    "note_call_stream_time": {
        "en": "The call-like stream was skipped to finish within {limit} and its few seconds more.",
        "id": "Aliran mirip panggilan dilewati agar selesai dalam {limit} ditambah beberapa detiknya.",
    },
    "note_call_stream_budget": {
        "en": "The call-like stream was skipped: today's test budget has too little left for it.",
        "id": "Aliran mirip panggilan dilewati: sisa anggaran uji hari ini tidak cukup.",
    },
    "dir_down": {"en": "download", "id": "unduhan"},
    "dir_up": {"en": "upload", "id": "unggahan"},
    "note_snmp_none": {
        "en": "This village has no SNMP settings: the router's status was not read.",
        "id": "Desa ini tidak punya pengaturan SNMP: status router tidak dibaca.",
    },
    "note_snmp_secret": {
        "en": "The router's status was not read: the SNMP secret {ref} is not available.",
        "id": "Status router tidak dibaca: rahasia SNMP {ref} tidak tersedia.",
    },
    "note_snmp_failed": {"en": "The router did not answer SNMP.", "id": "Router tidak menjawab SNMP."},
    "note_trace_failed": {"en": "The path trace could not run.", "id": "Penelusuran jalur tidak dapat berjalan."},
    "note_trace_permission": {
        "en": "The path trace needs root or `CAP_NET_RAW`.",
        "id": "Penelusuran jalur butuh root atau `CAP_NET_RAW`.",
    },
    "note_trace_time": {
        "en": "The path trace was skipped to finish within {limit}.",
        "id": "Penelusuran jalur dilewati agar selesai dalam {limit}.",
    },
    "note_history_failed": {
        "en": "History not shown: Prometheus at {url} could not be reached, so the last rehearsal call is not "
              "shown either.",
        "id": "Riwayat tidak ditampilkan: Prometheus di {url} tidak dapat dihubungi, jadi panggilan gladi terakhir "
              "juga tidak ditampilkan.",
    },
    "note_call_failed": {
        "en": "Last rehearsal call not shown: Prometheus at {url} could not be reached.",
        "id": "Panggilan gladi terakhir tidak ditampilkan: Prometheus di {url} tidak dapat dihubungi.",
    },
    "note_call_bad": {
        "en": "Last rehearsal call not shown: the answer from Prometheus at {url} could not be read.",
        "id": "Panggilan gladi terakhir tidak ditampilkan: jawaban Prometheus di {url} tidak dapat dibaca.",
    },
    "note_history_bad": {
        "en": "History not shown: the answer from Prometheus at {url} could not be read.",
        "id": "Riwayat tidak ditampilkan: jawaban Prometheus di {url} tidak dapat dibaca.",
    },
    "note_unmeasured": {
        "en": "Not measured, so not judged: {factors}.",
        "id": "Tidak diukur, jadi tidak dinilai: {factors}.",
    },
    "detail_elsewhere": {
        "en": "The details are in English: run with `--lang en` or `--json`.",
        "id": "Rinciannya dalam bahasa Inggris: jalankan dengan `--lang en` atau `--json`.",
    },
    # ------------------------------------------------------------------ could not measure (exit 2)
    "err_unknown_village": {
        "en": "no village called “{text}” in the inventory",
        "id": "tidak ada desa bernama “{text}” di inventaris",
    },
    "err_ambiguous_village": {
        "en": "“{text}” could be more than one village",
        "id": "“{text}” bisa berarti lebih dari satu desa",
    },
    "err_did_you_mean": {"en": "did you mean: {candidates}", "id": "mungkin maksudnya: {candidates}"},
    "err_inventory": {
        "en": "cannot read the inventory {path} (`desanet inventory check` lists every problem)",
        "id": "inventaris {path} tidak dapat dibaca (jalankan `desanet inventory check` untuk rinciannya)",
    },
    "err_unknown_profile": {
        "en": "no profile called “{name}”; the inventory has: {known}",
        "id": "tidak ada profil bernama “{name}”; yang ada di inventaris: {known}",
    },
    "err_unreachable": {
        "en": "the router {address} did not answer: none of {sent} packets came back",
        "id": "router {address} tidak menjawab: tidak satu pun dari {sent} paket kembali",
    },
    "err_no_permission": {
        "en": "no permission to send pings (ICMP needs root or `CAP_NET_RAW`)",
        "id": "tidak ada izin mengirim ping (ICMP butuh root atau `CAP_NET_RAW`)",
    },
    "err_nothing_measured": {
        "en": "no measurement could run",
        "id": "tidak ada pengukuran yang dapat berjalan",
    },
    # ------------------------------------------------------------------ units and calendar
    "unit_seconds": {"en": "{n} s", "id": "{n} detik"},
    "unit_minutes": {"en": "{n} min", "id": "{n} menit"},
    "unit_hours": {"en": "{n} h", "id": "{n} jam"},
    "unit_days": {"en": "{n} d", "id": "{n} hari"},
    "when_format": {"en": "{weekday} {date} {time} {zone}", "id": "{weekday} {date} pukul {time} {zone}"},
    "weekday_0": {"en": "Mon", "id": "Senin"},
    "weekday_1": {"en": "Tue", "id": "Selasa"},
    "weekday_2": {"en": "Wed", "id": "Rabu"},
    "weekday_3": {"en": "Thu", "id": "Kamis"},
    "weekday_4": {"en": "Fri", "id": "Jumat"},
    "weekday_5": {"en": "Sat", "id": "Sabtu"},
    "weekday_6": {"en": "Sun", "id": "Minggu"},
    "list_and": {"en": "{a} and {b}", "id": "{a} dan {b}"},
}
# fmt: on


def placeholders(template: str) -> set[str]:
    """The named fields a template takes."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def t(key: str, lang: Lang, **values: object) -> str:
    """The message `key` in `lang`, filled in. A missing key or value is a bug: it raises."""
    return MESSAGES[key][lang].format(**values)


def detect_lang(environ: Mapping[str, str] | None = None) -> Lang:
    """Bahasa Indonesia where the locale for messages is Indonesian, else English.

    POSIX order: LC_ALL overrides LC_MESSAGES, which overrides LANG; the first one set decides.
    """
    env = os.environ if environ is None else environ
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(var)
        if value:
            return "id" if value.lower().startswith("id") else "en"
    return "en"


# ---------------------------------------------------------------------------------------------- numbers
def _num(value: float, decimals: int, lang: Lang) -> str:
    text = f"{value:.{decimals}f}"
    return text.replace(".", ",") if lang == "id" else text


def _compact(value: float, lang: Lang) -> str:
    """A threshold as written in a profile: 30, 3.2, 0.5 (no trailing zeros)."""
    text = f"{value:.6g}"
    return text.replace(".", ",") if lang == "id" else text


def fmt_ms(seconds: float, lang: Lang, *, compact: bool = False) -> str:
    ms = seconds * 1000
    if compact:
        return f"{_compact(ms, lang)} ms"
    return f"{_num(ms, 2 if ms < 1 else 1 if ms < 100 else 0, lang)} ms"


def fmt_pct(ratio: float, lang: Lang, *, compact: bool = False) -> str:
    pct = ratio * 100
    if compact:
        return f"{_compact(pct, lang)} %"
    return f"{_num(pct, 1 if pct < 10 else 0, lang)} %"


def fmt_rate(bits_per_second: float, lang: Lang, *, compact: bool = False) -> str:
    mbit = bits_per_second / 1e6
    if compact:
        return f"{_compact(mbit, lang)} Mbit/s"
    if mbit >= 1000:
        return f"{_num(mbit / 1000, 1, lang)} Gbit/s"
    if mbit < 1:
        return f"{_num(bits_per_second / 1e3, 0, lang)} kbit/s"
    return f"{_num(mbit, 1 if mbit < 100 else 0, lang)} Mbit/s"


def fmt_number(value: float, lang: Lang) -> str:
    """A plain count or figure to one decimal at most: 24, 23,2 (frames per second, picture lines)."""
    return _compact(round(value, 1), lang)


def fmt_dbm(dbm: float, lang: Lang) -> str:
    return f"{_num(dbm, 1, lang)} dBm"


def fmt_mos(mos: float, lang: Lang) -> str:
    return _num(mos, 1, lang)


def fmt_seconds(seconds: float, lang: Lang) -> str:
    return t("unit_seconds", lang, n=_num(seconds, 1, lang))


def fmt_duration(seconds: float, lang: Lang) -> str:
    """A long span in the two largest units: "3 d 4 h", "12 min", "3 hari 4 jam"."""
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts: list[str] = []
    if days:
        parts = [t("unit_days", lang, n=days), t("unit_hours", lang, n=hours)]
    elif hours:
        parts = [t("unit_hours", lang, n=hours), t("unit_minutes", lang, n=minutes)]
    elif minutes:
        parts = [t("unit_minutes", lang, n=minutes)]
    else:
        parts = [t("unit_seconds", lang, n=s)]
    return " ".join(parts)


def fmt_time(when: datetime, lang: Lang) -> str:
    """Time of day: 09:00 in English, 09.00 in Indonesian."""
    return when.strftime("%H.%M" if lang == "id" else "%H:%M")


def fmt_when(when: datetime, lang: Lang) -> str:
    """A moment as people read it in a schedule: "Thu 2026-12-03 09:00 WIB", "Kamis 2026-12-03 pukul 09.00 WIB"."""
    return t(
        "when_format",
        lang,
        weekday=t(f"weekday_{when.weekday()}", lang),
        date=when.strftime("%Y-%m-%d"),
        time=fmt_time(when, lang),
        zone=when.tzname() or "",
    ).strip()


def fmt_day(when: datetime, lang: Lang) -> str:
    return f"{t(f'weekday_{when.weekday()}', lang)} {when:%Y-%m-%d}"


def join_words(items: list[str], lang: Lang) -> str:
    """'a, b and c' in the language."""
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return t("list_and", lang, a=", ".join(items[:-1]), b=items[-1])


@dataclass(frozen=True)
class Q:
    """A value to be written in the reader's language when a message is rendered: a number with its unit, a
    moment, a span, or another message by key."""

    kind: Literal[
        "ms", "ms_compact", "pct", "pct_compact", "rate", "rate_compact", "seconds", "duration", "when", "dbm", "key"
    ]
    value: Any

    def render(self, lang: Lang) -> str:
        k, v = self.kind, self.value
        if k in ("ms", "ms_compact"):
            return fmt_ms(v, lang, compact=k == "ms_compact")
        if k in ("pct", "pct_compact"):
            return fmt_pct(v, lang, compact=k == "pct_compact")
        if k in ("rate", "rate_compact"):
            return fmt_rate(v, lang, compact=k == "rate_compact")
        if k == "seconds":
            return fmt_seconds(v, lang)
        if k == "duration":
            return fmt_duration(v, lang)
        if k == "when":
            return fmt_when(v, lang)
        if k == "key":
            return t(v, lang)
        return fmt_dbm(v, lang)


def render(key: str, values: Mapping[str, Any], lang: Lang) -> str:
    return t(key, lang, **{k: v.render(lang) if isinstance(v, Q) else v for k, v in values.items()})
